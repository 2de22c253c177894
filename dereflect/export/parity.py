"""The parity gate: run an artifact on validation images, compare with PyTorch fp32.

Numbers (Polygraphy-style output comparison, plus the task metric as Qualcomm AI Hub's
numerics ledger does): max and mean |diff| and the PSNR between the artifact's and PyTorch's
outputs; with ground truth (always, for the default synthesised pairs; `--pairs` for real ones)
the SSIM drop and LMSE rise against it, i.e. how much of the model's quality the conversion
costs. Budgets per precision (defaults: fp32 max|diff| <= 1e-4, fp16 SSIM drop <= 0.002, int8
SSIM drop <= 0.01) decide passed/failed; the verdict and numbers go into the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dereflect.export.calib import ImageSet

#: run(images) or, for a graph with the photo-colour input, run(images, colour feeds) -> outputs.
Runner = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Budget:
    """Allowed drop for one precision; None = not checked."""

    max_abs_diff: float | None = None
    max_ssim_drop: float | None = None
    max_lmse_rise: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


DEFAULT_BUDGETS: dict[str, Budget] = {
    "fp32": Budget(max_abs_diff=1e-4),
    "fp16": Budget(max_ssim_drop=0.002),
    "int8": Budget(max_ssim_drop=0.01),
}


def budget_for(
    precision: str, max_abs_diff: float | None = None, max_ssim_drop: float | None = None, max_lmse_rise: float | None = None
) -> Budget:
    """The precision's default budget with any option given on the command line replacing its part."""
    base = DEFAULT_BUDGETS[precision]
    return Budget(
        max_abs_diff if max_abs_diff is not None else base.max_abs_diff,
        max_ssim_drop if max_ssim_drop is not None else base.max_ssim_drop,
        max_lmse_rise if max_lmse_rise is not None else base.max_lmse_rise,
    )


def _hwc255(chw: np.ndarray) -> np.ndarray:
    return np.clip(chw, 0.0, 1.0).transpose(1, 2, 0).astype(np.float64) * 255.0


@dataclass
class Reference:
    """PyTorch fp32 outputs on the validation set, and their scores against ground truth."""

    data: ImageSet
    outputs: np.ndarray
    ssim: np.ndarray | None
    lmse: np.ndarray | None


def ssim_score(truth: np.ndarray, output: np.ndarray) -> float:
    """SSIM of one CHW output against its CHW ground truth, as the gate scores it (0-255, clipped)."""
    from dereflect import metrics

    return float(metrics.ssim(_hwc255(truth), _hwc255(output)))


def make_reference(model, data: ImageSet) -> Reference:
    import torch

    from dereflect import metrics

    with torch.no_grad():
        outs = [model(*_args(data, i, torch.from_numpy)) for i in range(len(data))]
        outs = np.concatenate([(o[0] if isinstance(o, tuple) else o).numpy() for o in outs])  # a PhotoColourGraph: (transmission, colour)
    ssim = lmse = None
    if data.truth is not None:
        ssim = np.array([metrics.ssim(_hwc255(g), _hwc255(o)) for g, o in zip(data.truth, outs)])
        lmse = np.array([metrics.lmse(_hwc255(g), _hwc255(o)) for g, o in zip(data.truth, outs)])
    return Reference(data, outs.astype(np.float32), ssim, lmse)


def _args(data: ImageSet, i: int, wrap: Callable = np.asarray) -> tuple:
    """The inputs of image i: the image, and its photo-colour feed when the set has them."""
    args = (data.images[i : i + 1],) if data.colour is None else (data.images[i : i + 1], data.colour[i : i + 1])
    return tuple(wrap(np.ascontiguousarray(a)) for a in args)


def measure(run: Runner, ref: Reference) -> dict[str, float]:
    """Run the artifact image by image (batch 1, as deployed) and compute the numbers."""
    from dereflect import metrics

    outs = np.concatenate([np.asarray(run(*_args(ref.data, i)), dtype=np.float32) for i in range(len(ref.data))])
    if outs.shape != ref.outputs.shape:
        return {"shape_mismatch": 1.0}
    diff = np.abs(outs.astype(np.float64) - ref.outputs)
    finite = bool(np.isfinite(outs).all())
    psnrs = [metrics.psnr(_hwc255(r), _hwc255(o)) for r, o in zip(ref.outputs, outs)]
    numbers = {
        "images": float(len(outs)),
        "max_abs_diff": float(diff.max()) if finite else float("inf"),
        "mean_abs_diff": float(diff.mean()) if finite else float("inf"),
        "psnr_vs_reference": float(np.mean(np.minimum(psnrs, 100.0))),
    }
    if ref.ssim is not None and ref.lmse is not None and ref.data.truth is not None:
        ssim = np.array([metrics.ssim(_hwc255(g), _hwc255(o)) for g, o in zip(ref.data.truth, outs)])
        lmse = np.array([metrics.lmse(_hwc255(g), _hwc255(o)) for g, o in zip(ref.data.truth, outs)])
        numbers.update(
            {
                "ssim_reference": float(ref.ssim.mean()),
                "ssim_artifact": float(ssim.mean()),
                "ssim_drop": float(ref.ssim.mean() - ssim.mean()),
                "lmse_reference": float(ref.lmse.mean()),
                "lmse_artifact": float(lmse.mean()),
                "lmse_rise": float(lmse.mean() - ref.lmse.mean()),
            }
        )
    return numbers


def judge(numbers: dict[str, float], budget: Budget) -> list[str]:
    """The budget lines a measurement breaks, for a person ("ssim_drop 0.0213 > 0.01")."""
    if "shape_mismatch" in numbers:
        return ["output shape differs from PyTorch's"]
    failures = []
    checks = (("max_abs_diff", budget.max_abs_diff), ("ssim_drop", budget.max_ssim_drop), ("lmse_rise", budget.max_lmse_rise))
    for key, limit in checks:
        if limit is None:
            continue
        value = numbers.get(key)
        if value is None:
            failures.append(f"{key} not measurable (no ground truth): give --pairs")
        elif not np.isfinite(value) or value > limit:
            failures.append(f"{key} {value:.4g} > {limit:.4g}")
    return failures


def check(run: Runner, ref: Reference, budget: Budget, runner_name: str) -> dict[str, Any]:
    """The manifest's `parity` block for an artifact this machine can run."""
    numbers = measure(run, ref)
    failures = judge(numbers, budget)
    return {
        "status": "failed" if failures else "passed",
        "reference": "PyTorch fp32",
        "runner": runner_name,
        "data": ref.data.source,
        "budget": budget.as_dict(),
        "metrics": {k: (round(v, 8) if np.isfinite(v) else str(v)) for k, v in numbers.items()},
        "failures": failures,
    }


def not_run(reason: str, budget: Budget) -> dict[str, Any]:
    return {"status": "not run", "reason": reason, "reference": "PyTorch fp32", "budget": budget.as_dict(), "metrics": {}, "failures": []}


def summary(parity: dict[str, Any]) -> str:
    """One short line for the console table."""
    m = parity.get("metrics", {})
    if parity["status"] == "not run":
        return f"not run: {parity.get('reason', '')}"
    parts = []
    if "max_abs_diff" in m:
        parts.append(f"max|d| {float(m['max_abs_diff']):.2g}")
    if "psnr_vs_reference" in m:
        parts.append(f"PSNR {float(m['psnr_vs_reference']):.1f} dB")
    if "ssim_drop" in m:
        parts.append(f"dSSIM {float(m['ssim_drop']):+.4f}")
    if "lmse_rise" in m:
        parts.append(f"dLMSE {float(m['lmse_rise']):+.5f}")
    return f"{parity['status']}: " + ", ".join(parts)
