"""Building blocks shared by the teacher and the student.

The student uses only ops every export target runs well (Conv, ReLU/LeakyReLU, Add, Concat,
Resize); `warp` (grid_sample) is for the teacher and the losses only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pixel_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 2, H, W) pixel coordinates: channel 0 is x (column), channel 1 is y (row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys)).unsqueeze(0)


def warp(x: torch.Tensor, flow: torch.Tensor, return_mask: bool = False):
    """Backward-warp `x` with `flow` (pixels): out(p) = x(p + flow(p)), bilinear, zeros outside.

    Flow convention used across the project (synthesis, Flow Net, losses): a flow lives on the
    grid of the frame we warp *to* (the middle frame); channel 0 is dx, channel 1 is dy. So
    warping neighbour i with the true flow of a layer reproduces that layer in the middle frame.
    With `return_mask`, also returns a (B,1,H,W) mask of pixels whose source lies inside x.
    """
    b, _, h, w = x.shape
    if flow.shape[-2:] != (h, w):
        raise ValueError(f"flow {tuple(flow.shape)} does not match features {tuple(x.shape)}")
    coords = pixel_grid(h, w, x.device, x.dtype) + flow
    gx = 2.0 * coords[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * coords[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if not return_mask:
        return out
    inside = (gx.abs() <= 1.0) & (gy.abs() <= 1.0)
    return out, inside.unsqueeze(1).to(x.dtype)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a pixel flow field to `size` (H, W), scaling the vectors with the grid."""
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], device=flow.device, dtype=flow.dtype)
    return out * scale.view(1, 2, 1, 1)
