"""`dereflect eval`: score a model on a paired set with the literature's metrics.

Two layouts are understood (docs/DESIGN.md, "Data flow and conventions"):
- paired set: DIR/blended/NAME.* + DIR/transmission/NAME.* (or DIR/transmission_layer/NAME.*),
  matched by file stem; files without a partner are skipped with a warning naming them;
- synthetic sequence set: DIR/SEQ/frame_000.png ... + DIR/SEQ/transmission/frame_000.png ...;
  the model sees the middle frame (index N//2) and is scored against its transmission.

`evaluate()` is the library function (a `predict(rgb_uint8_hwc) -> rgb_uint8_hwc` callable in,
per-image rows and their mean out); the command (evaluate/cli.py) wraps it with model loading, a
table and JSON.
A pair that cannot be read is reported (`error: <file>: <problem>`) and the others still run;
the command then exits 1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dereflect import metrics
from dereflect.errors import DereflectError
from dereflect.images import list_images, read_rgb

Predict = Callable[[np.ndarray], np.ndarray]
METRIC_NAMES = ("psnr", "ssim", "lmse", "ncc")
TRANSMISSION_DIRS = ("transmission", "transmission_layer")


class UnpairedWarning(UserWarning):
    """A file in a paired set without its partner: skipped."""


@dataclass(frozen=True)
class Pair:
    """One evaluation item: the model's input and the ground-truth transmission."""

    name: str
    blended: Path
    transmission: Path


@dataclass
class EvalResult:
    """Per-image scores (rows: name, psnr, ssim, lmse, ncc, gt_shift), their mean, and the pairs that failed.

    `gt_shift` is the measured translation (px) between a pair's photo and its ground truth
    (metrics.gt_shift); `aligned_mean` leaves out pairs shifted more than ALIGNED_MAX_SHIFT,
    because scores on those reward blur and haze rather than reflection removal.
    """

    rows: list[dict] = field(default_factory=list)
    failures: list[DereflectError] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        return _mean(self.rows)

    @property
    def aligned_rows(self) -> list[dict]:
        return [r for r in self.rows if r["gt_shift"] <= metrics.ALIGNED_MAX_SHIFT]

    @property
    def aligned_mean(self) -> dict[str, float]:
        """The mean over pairs whose ground truth is aligned with the photo (see the class docstring)."""
        return _mean(self.aligned_rows)

    def to_json(self, model: str, pairs: Path) -> dict:
        """JSON-ready dict; non-finite numbers (PSNR of a perfect match) become null."""

        def clean(d: dict) -> dict:
            return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in d.items()}

        return {
            "model": model,
            "pairs": str(pairs),
            "rows": [clean(r) for r in self.rows],
            "mean": clean(self.mean),
            "aligned_mean": clean({**self.aligned_mean, "pairs": len(self.aligned_rows), "max_gt_shift": metrics.ALIGNED_MAX_SHIFT}),
            "failures": [{"path": f.path, "problem": f.problem} for f in self.failures],
        }


def _mean(rows: list[dict]) -> dict[str, float]:
    if not rows:
        return {k: math.nan for k in METRIC_NAMES}
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES}


Notify = Callable[[str], None]


def _warn(message: str) -> None:
    warnings.warn(message, UnpairedWarning, stacklevel=4)


def _by_stem(folder: Path, skip: Notify) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in list_images(folder):
        if p.stem in out:
            skip(f"{p}: same name as {out[p.stem].name}, skipped")
            continue
        out[p.stem] = p
    return out


def _paired_set(root: Path, skip: Notify) -> list[Pair]:
    trans_dir = next((root / d for d in TRANSMISSION_DIRS if (root / d).is_dir()), None)
    if trans_dir is None:
        raise DereflectError(root, "has blended/ but no transmission/ (or transmission_layer/) folder")
    blended, trans = _by_stem(root / "blended", skip), _by_stem(trans_dir, skip)
    for stem in sorted(set(blended) ^ set(trans)):
        lone = blended.get(stem) or trans[stem]
        skip(f"{lone}: no matching {'transmission' if stem in blended else 'blended'} image, skipped")
    return [Pair(stem, blended[stem], trans[stem]) for stem in sorted(set(blended) & set(trans))]


def _sequence_set(root: Path, skip: Notify) -> list[Pair]:
    pairs = []
    for seq in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        frames = [p for p in list_images(seq) if p.stem.startswith("frame_")]
        if not frames:
            continue
        middle = frames[len(frames) // 2]
        trans = _by_stem(seq / "transmission", skip) if (seq / "transmission").is_dir() else {}
        if middle.stem not in trans:
            skip(f"{middle}: no transmission/{middle.stem}.* to score against, skipped")
            continue
        pairs.append(Pair(seq.name, middle, trans[middle.stem]))
    return pairs


def find_pairs(pairs_dir: Path, on_skip: Optional[Notify] = None) -> list[Pair]:
    """The evaluation items of a paired set or a synthetic sequence set, sorted by name.

    Each file skipped (no partner) is passed to on_skip, or warned about (UnpairedWarning).
    """
    skip = on_skip or _warn
    root = Path(pairs_dir)
    if not root.exists():
        raise DereflectError(root, "no such folder")
    if not root.is_dir():
        raise DereflectError(root, "is a file, not a folder of pairs")
    pairs = _paired_set(root, skip) if (root / "blended").is_dir() else _sequence_set(root, skip)
    if not pairs:
        raise DereflectError(root, "no pairs found (expected blended/ + transmission/, or SEQ/frame_*.png + SEQ/transmission/)")
    return pairs


def _score_pair(predict: Predict, pair: Pair) -> dict:
    blended = read_rgb(pair.blended)
    truth = read_rgb(pair.transmission)
    if blended.shape != truth.shape:
        raise DereflectError(
            pair.transmission,
            f"size {truth.shape[1]}x{truth.shape[0]} differs from "
            f"its blended image {pair.blended.name} ({blended.shape[1]}x{blended.shape[0]})",
        )
    out = np.asarray(predict(blended))
    if out.shape != truth.shape or out.dtype != np.uint8:
        raise DereflectError(pair.blended, f"model returned {out.dtype} {out.shape}, expected uint8 {truth.shape}")
    try:
        return {"name": pair.name, **metrics.score(truth, out), "gt_shift": metrics.gt_shift(truth, blended)}
    except ValueError as exc:  # e.g. smaller than one LMSE window
        raise DereflectError(pair.transmission, str(exc)) from None


def _progress(items: list[Pair], enabled: bool) -> Iterable[Pair]:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description="scoring", transient=True, console=None)


def evaluate(
    predict: Predict,
    pairs_dir: Path,
    progress: bool = True,
    on_error: Optional[Callable[[DereflectError], None]] = None,
    on_skip: Optional[Notify] = None,
) -> EvalResult:
    """Run predict on every pair's input and score it against the transmission.

    A pair that cannot be read or scored is recorded in result.failures (and passed to on_error
    as it happens) and the rest go on. Unpaired files go to on_skip (default: UnpairedWarning).
    Missing folder / no pairs raise DereflectError.
    """
    items = find_pairs(Path(pairs_dir), on_skip)
    result = EvalResult()
    for pair in _progress(items, progress):
        try:
            result.rows.append(_score_pair(predict, pair))
        except DereflectError as exc:
            result.failures.append(exc)
            if on_error is not None:
                on_error(exc)
    return result


def load_predict(model: str) -> Predict:
    """'identity' (input as output) or anything dereflect.runtime.load understands."""
    if model == "identity":
        return lambda rgb: rgb
    from dereflect.runtime import load

    return load(model).run
