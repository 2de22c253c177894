"""Images for the export stage: INT8 calibration inputs and the parity gate's validation pairs.

Both are taken at the export resolution (`--size`, default 256): INT8 ranges are collected on
what the model will see, and 256 px keeps calibration and parity fast on a 2-core CPU (the
student is fully convolutional, so activation ranges at 256 px cover those at 512 px well; pass
`--size 512` to calibrate at the benchmark resolution). Default calibration images are middle
frames of synthesised sequences (a single-image sample of the training data's process); the
default validation pairs are more of them, from another seed, with their true transmission, so
the gate can measure the SSIM/LMSE drop against ground truth even without `--pairs`.

Where no trained checkpoint exists (tests, benchmarks), `dereflect.models.reference.reference_student`
gives one with random but realistic weights: a fresh student is exactly the identity (its last conv
starts at zero), which would make every parity check trivial.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from dereflect.errors import DereflectError

DEFAULT_SIZE = 256
DEFAULT_CALIB_COUNT = 16
DEFAULT_VAL_COUNT = 8
MIN_CALIB_IMAGES = 4
GREY_TOLERANCE = 2  # uint8 levels: a channel spread below this everywhere counts as grey
PAIR_GT_DIRS = ("transmission", "transmission_layer")


@dataclass
class ImageSet:
    """NCHW float32 [0,1] images at one size, with ground truth when known, and where they came from."""

    images: np.ndarray
    truth: np.ndarray | None
    names: list[str]
    source: str
    colour: np.ndarray | None = None  # (N,13,1,1) photo-colour feeds, for a graph that takes them (models/mobile_student.py)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def fit_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 HWC -> size x size: scale the short side to `size` (Lanczos), centre crop."""
    h, w = pixels.shape[:2]
    scale = size / min(h, w)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    img = Image.fromarray(pixels)
    if new != (w, h):
        img = img.resize(new, Image.Resampling.LANCZOS)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def _nchw(batch: list[np.ndarray]) -> np.ndarray:
    """uint8 or float [0,1] HWC list -> NCHW float32 [0,1]."""
    arr = np.stack(batch)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32)


@lru_cache(maxsize=4)
def _source_photos(max_side: int) -> tuple[np.ndarray, ...]:
    from dereflect.data.photos import load_photos

    return tuple(load_photos(None, max_side))


def synthesize_pairs(count: int, size: int, seed: int) -> ImageSet:
    """`count` (blended, transmission) samples: middle frames of synthesised 3-frame sequences
    from scikit-image's bundled photos, deterministic for `seed`."""
    from dereflect.data.synth import synthesize_sequence

    photos = _source_photos(max(2 * size, 256))
    rng = np.random.default_rng(seed)
    blended, truth = [], []
    for _ in range(count):
        t_idx, r_idx = rng.choice(len(photos), size=2, replace=False)
        seq = synthesize_sequence(photos[t_idx], photos[r_idx], n_frames=3, size=size, rng=rng)
        blended.append(seq.frames[seq.middle])
        truth.append(seq.transmission[seq.middle])
    names = [f"synth-{seed}-{i:03d}" for i in range(count)]
    return ImageSet(_nchw(blended), _nchw(truth), names, f"synthesised (seed {seed}, {count} x {size}px middle frames)")


def synthesize_sequences(count: int, size: int, seed: int, frames: int = 5) -> ImageSet:
    """`count` burst samples for a model with a frames input (models/burst.py): images
    (count, frames, 3, size, size) and the middle frame's transmission (count, 3, size, size),
    synthesised from scikit-image's photos like `synthesize_pairs`; deterministic for `seed`."""
    from dereflect.data.synth import synthesize_sequence

    photos = _source_photos(max(2 * size, 256))
    rng = np.random.default_rng(seed)
    sequences, truth = [], []
    for _ in range(count):
        t_idx, r_idx = rng.choice(len(photos), size=2, replace=False)
        seq = synthesize_sequence(photos[t_idx], photos[r_idx], n_frames=frames, size=size, rng=rng)
        sequences.append(_nchw(list(seq.frames)))
        truth.append(seq.transmission[seq.middle])
    names = [f"synth-seq-{seed}-{i:03d}" for i in range(count)]
    source = f"synthesised (seed {seed}, {count} sequences of {frames} x {size}px frames)"
    return ImageSet(np.stack(sequences), _nchw(truth), names, source)


def _no_folder(folder: Path | None, option: str) -> None:
    if folder is not None:
        raise DereflectError(
            folder, f"{option} takes single photos; a burst model calibrates and is checked on synthesised sequences (leave {option} out)"
        )


def _read_fitted(path: Path, size: int) -> np.ndarray:
    from dereflect.data.photos import read_rgb_uint8

    pixels = read_rgb_uint8(path)
    h, w = pixels.shape[:2]
    if min(h, w) * 2 < size:
        raise DereflectError(path, f"image is {w}x{h} px, under half the export size {size}: use larger images or a smaller --size")
    return fit_square(pixels, size)


def load_calibration(
    folder: Path | None, count: int = DEFAULT_CALIB_COUNT, size: int = DEFAULT_SIZE, seed: int = 0, frames: int | None = None
) -> ImageSet:
    """INT8 calibration inputs: up to `count` images of `folder` (sorted), else synthesised
    (`frames`: 5-frame sequences for a burst model, which calibrates on synthesis only).

    Refused with one DereflectError each: a folder with no images, an unreadable file, fewer than
    MIN_CALIB_IMAGES images, images far smaller than the export size, or only greyscale images
    (their ranges would not cover colour photos).
    """
    if count < MIN_CALIB_IMAGES:
        raise DereflectError(None, f"--calib-count {count} is too few: INT8 calibration needs at least {MIN_CALIB_IMAGES} images")
    if frames is not None:
        _no_folder(folder, "--calib")
        return synthesize_sequences(count, size, seed, frames)
    if folder is None:
        return synthesize_pairs(count, size, seed)
    from dereflect.data.photos import list_photo_files

    folder = Path(folder)
    files = list_photo_files(folder)[:count]
    if len(files) < MIN_CALIB_IMAGES:
        raise DereflectError(
            folder,
            f"only {len(files)} calibration image(s); INT8 calibration needs at least "
            f"{MIN_CALIB_IMAGES} (16-64 photos like the ones the model will see)",
        )
    pixels = [_read_fitted(p, size) for p in files]
    spread = [int((p.max(axis=2).astype(np.int16) - p.min(axis=2)).max()) for p in pixels]
    if all(s < GREY_TOLERANCE for s in spread):
        raise DereflectError(
            folder,
            f"all {len(files)} calibration images are greyscale: INT8 ranges taken on them "
            "would not cover colour photos; add colour images",
        )
    return ImageSet(_nchw(pixels), None, [p.name for p in files], f"{folder} ({len(files)} images at {size}px)")


def load_pairs(
    folder: Path | None, count: int = DEFAULT_VAL_COUNT, size: int = DEFAULT_SIZE, seed: int = 1, frames: int | None = None
) -> ImageSet:
    """Validation pairs for the parity gate: `folder/blended/NAME.*` + `folder/transmission/NAME.*`
    (or `transmission_layer/`), matched by name, both fitted to size x size; else synthesised
    (`frames`: synthesised sequences with the middle frame's transmission, for a burst model)."""
    if count < 1:
        raise DereflectError(None, f"--val-count must be at least 1, got {count}")
    if frames is not None:
        _no_folder(folder, "--pairs")
        return synthesize_sequences(count, size, seed, frames)
    if folder is None:
        return synthesize_pairs(count, size, seed)
    from dereflect.data.photos import list_photo_files

    folder = Path(folder)
    blended_dir = folder / "blended"
    gt_dir = next((folder / d for d in PAIR_GT_DIRS if (folder / d).is_dir()), None)
    if not blended_dir.is_dir() or gt_dir is None:
        raise DereflectError(folder, "a paired set needs blended/ and transmission/ (or transmission_layer/) folders")
    gts = {p.stem: p for p in list_photo_files(gt_dir)}
    pairs = [(b, gts[b.stem]) for b in list_photo_files(blended_dir) if b.stem in gts][:count]
    if not pairs:
        raise DereflectError(folder, f"no image in blended/ has a namesake in {gt_dir.name}/")
    blended, truth = [], []
    from dereflect.data.photos import read_rgb_uint8

    for b_path, t_path in pairs:
        b, t = read_rgb_uint8(b_path), read_rgb_uint8(t_path)
        if b.shape != t.shape:
            raise DereflectError(t_path, f"size {t.shape[1]}x{t.shape[0]} differs from its blended image {b.shape[1]}x{b.shape[0]}")
        if min(b.shape[:2]) * 2 < size:
            raise DereflectError(b_path, f"image is {b.shape[1]}x{b.shape[0]} px, under half the export size {size}")
        blended.append(fit_square(b, size))
        truth.append(fit_square(t, size))
    return ImageSet(_nchw(blended), _nchw(truth), [b.stem for b, _ in pairs], f"{folder} ({len(pairs)} pairs at {size}px)")
