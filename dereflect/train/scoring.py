"""Validation scores: literature metrics on the uint8 image `dereflect remove` would write."""

from __future__ import annotations

import numpy as np
import torch

from dereflect.images import from_float


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3,H,W) float [0,1] -> HWC uint8, rounded as `dereflect remove` writes it."""
    return from_float(x.detach().float().permute(1, 2, 0).cpu().numpy())


def score_batch(pred: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor) -> dict[str, list[float]]:
    """Literature metrics per image on uint8-rounded outputs, plus the identity baseline."""
    from dereflect.metrics import lmse, psnr, ssim

    out: dict[str, list[float]] = {k: [] for k in ("psnr", "ssim", "lmse", "id_psnr", "id_ssim", "id_lmse")}
    for p, t, x in zip(pred, target, inputs):
        gt, est, ident = tensor_to_uint8(t), tensor_to_uint8(p), tensor_to_uint8(x)
        out["psnr"].append(psnr(gt, est))
        out["ssim"].append(ssim(gt, est))
        out["lmse"].append(lmse(gt, est))
        out["id_psnr"].append(psnr(gt, ident))
        out["id_ssim"].append(ssim(gt, ident))
        out["id_lmse"].append(lmse(gt, ident))
    return out
