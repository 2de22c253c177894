"""Quality of one target on a paired set, beside the PyTorch fp32 reference and the identity.

Every pair is run at full resolution through `Session.run` with float input, which is exactly
the uint8 path (the runtime converts uint8 to float with the same 1/255 scale) minus the final
rounding; rounding here as the runtime does gives the uint8 photo a user gets, scored with
`dereflect.metrics`, while the float output measures max|diff| against the reference (the fp32
budget, 1e-4, is far below one uint8 level). The verdict uses the export stage's budgets and
judge (`dereflect.export.parity`), so "passed" means the same thing at export and here.

Pairs and reference outputs are kept in memory up to a byte budget and spilled to a temporary
folder beyond it, so a thousand-pair set does not need gigabytes of RAM.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dereflect import metrics
from dereflect.errors import DereflectError
from dereflect.export import parity as parity_mod
from dereflect.images import from_float, to_float

RunFloat = Callable[[np.ndarray], np.ndarray]  # HxWx3 float32 [0,1] -> same
MEMORY_BUDGET = 256 * 2**20  # bytes of pairs / reference outputs kept in RAM before spilling to disk
THUMB_SIDE = 192
METRIC_IMPL = "dereflect.metrics (PSNR; SSIM = scikit-image defaults, 7x7 uniform; LMSE 20/10 windows)"


def thumbnail(pixels: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(pixels)
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(img)


class ArrayStore:
    """Arrays by index, in RAM up to `budget` bytes, then as .npy files in a temporary folder."""

    def __init__(self, budget: int = MEMORY_BUDGET) -> None:
        self.budget = budget
        self.used = 0
        self._mem: dict[int, Any] = {}
        self._disk: dict[int, Path] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def put(self, index: int, value: Any) -> None:
        size = sum(a.nbytes for a in value) if isinstance(value, tuple) else value.nbytes
        if self.used + size <= self.budget:
            self._mem[index] = value
            self.used += size
            return
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dereflect-bench-")
        path = Path(self._tmp.name) / f"{index}.npz"
        parts = value if isinstance(value, tuple) else (value,)
        np.savez(path, *parts)
        self._disk[index] = path

    def get(self, index: int) -> Any:
        if index in self._mem:
            return self._mem[index]
        with np.load(self._disk[index]) as data:
            parts = tuple(data[f"arr_{i}"] for i in range(len(data.files)))
        return parts if len(parts) > 1 else parts[0]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@dataclass
class PairSet:
    """The scoring set: names, where it came from, and (blended, truth) uint8 HWC per pair."""

    names: list[str]
    source: str
    store: ArrayStore

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for i, name in enumerate(self.names):
            blended, truth = self.store.get(i)
            yield name, blended, truth

    def first_photo(self) -> np.ndarray:
        return self.store.get(0)[0]


def load_pair_set(
    pairs_dir: Path | None,
    max_pairs: int | None = None,
    synth_count: int = 4,
    synth_size: int = 256,
    on_skip: Callable[[str], None] | None = None,
) -> PairSet:
    """`--pairs` (a paired set or a synthetic sequence set, as `dereflect eval` reads them), or,
    without it, synthesised pairs at `synth_size` (the export gate's default validation data)."""
    store = ArrayStore()
    if pairs_dir is None:
        from dereflect.export.calib import synthesize_pairs

        data = synthesize_pairs(synth_count, synth_size, seed=1)
        assert data.truth is not None
        for i in range(len(data)):
            store.put(i, (from_float(data.images[i].transpose(1, 2, 0)), from_float(data.truth[i].transpose(1, 2, 0))))
        return PairSet(list(data.names), data.source, store)
    from dereflect.evaluate import find_pairs
    from dereflect.images import read_rgb

    pairs = find_pairs(Path(pairs_dir), on_skip)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    for i, pair in enumerate(pairs):
        blended, truth = read_rgb(pair.blended), read_rgb(pair.transmission)
        if blended.shape != truth.shape:
            raise DereflectError(
                pair.transmission,
                f"size {truth.shape[1]}x{truth.shape[0]} differs from its blended "
                f"image {pair.blended.name} ({blended.shape[1]}x{blended.shape[0]})",
            )
        if min(truth.shape[:2]) < metrics.LMSE_WINDOW:
            raise DereflectError(pair.transmission, f"image is smaller than one LMSE window ({metrics.LMSE_WINDOW} px)")
        store.put(i, (blended, truth))
    return PairSet([p.name for p in pairs], f"{pairs_dir} ({len(pairs)} pairs, full resolution)", store)


@dataclass
class Quality:
    """Mean scores of one model on the set, per-image scores, thumbnails, and (for a target)
    the comparison with the reference."""

    mean: dict[str, float]
    per_image: list[dict[str, Any]]
    thumbs: dict[str, np.ndarray] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)  # parity.measure's keys


def identity_quality(pairs: PairSet) -> Quality:
    """The baseline every model must beat: the photo itself as the answer."""
    rows = [{"name": n, **metrics.score(t, b)} for n, b, t in pairs]
    return Quality(_mean(rows), rows)


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "lmse", "ncc")}


def score_model(
    run: RunFloat, pairs: PairSet, *, reference: Reference | None = None, keep: ArrayStore | None = None, thumbs: int = 0
) -> Quality:
    """Run every pair, score it against ground truth, compare with the reference outputs."""
    rows: list[dict[str, Any]] = []
    small: dict[str, np.ndarray] = {}
    max_abs, abs_sum, count, psnrs = 0.0, 0.0, 0, []
    for i, (name, blended, truth) in enumerate(pairs):
        out = np.asarray(run(to_float(blended)), dtype=np.float32)
        if out.shape != blended.shape:
            raise DereflectError(None, f"model returned shape {out.shape} for {name} of shape {blended.shape}")
        photo = from_float(out)
        rows.append({"name": name, **metrics.score(truth, photo)})
        if i < thumbs:
            small[name] = thumbnail(photo)
        if keep is not None:
            keep.put(i, out)
        if reference is not None:
            ref = reference.outputs.get(i)
            diff = np.abs(out.astype(np.float64) - ref)
            finite = bool(np.isfinite(out).all())
            max_abs = max(max_abs, float(diff.max()) if finite else math.inf)
            abs_sum += float(diff.sum()) if finite else math.inf
            count += diff.size
            psnrs.append(min(metrics.psnr(np.clip(ref, 0, 1) * 255.0, np.clip(out, 0, 1) * 255.0), 100.0))
    quality = Quality(_mean(rows), rows, small)
    if reference is not None:
        ref_mean = reference.quality.mean
        quality.numbers = {
            "images": float(len(rows)),
            "max_abs_diff": max_abs,
            "mean_abs_diff": abs_sum / max(count, 1),
            "psnr_vs_reference": float(np.mean(psnrs)),
            "ssim_reference": ref_mean["ssim"],
            "ssim_artifact": quality.mean["ssim"],
            "ssim_drop": ref_mean["ssim"] - quality.mean["ssim"],
            "lmse_reference": ref_mean["lmse"],
            "lmse_artifact": quality.mean["lmse"],
            "lmse_rise": quality.mean["lmse"] - ref_mean["lmse"],
        }
    return quality


@dataclass
class Reference:
    """The PyTorch fp32 model's outputs and scores on the set (what each target is held to)."""

    label: str
    quality: Quality
    outputs: ArrayStore


def verdict(quality: Quality, budget: parity_mod.Budget, min_ssim: float | None) -> list[str]:
    """The budget lines a target breaks (empty: passed). Without a reference every drop is
    unmeasurable, which `parity.judge` reports as a failure: a gate must not pass blind."""
    numbers = quality.numbers or {}
    failures = parity_mod.judge(numbers, budget)
    if not numbers:
        failures = [f.replace("(no ground truth): give --pairs", "(no PyTorch fp32 reference found)") for f in failures]
    if min_ssim is not None and quality.mean["ssim"] < min_ssim:
        failures.append(f"ssim {quality.mean['ssim']:.4f} < --min-ssim {min_ssim:.4f}")
    return failures
