"""Natural photos to synthesise from: a folder of them, or scikit-image's bundled ones.

The bundled set means a fresh clone (no ../shared/data) can still synthesise, test and demo;
real training should pass a folder of a few hundred photos (docs/DESIGN.md, "Data flow and conventions").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dereflect.errors import DereflectError
from dereflect.images import IMAGE_SUFFIXES, list_images, read_rgb

# scikit-image's bundled photos (no download needed): natural colour ones first, then grey
# ones (stacked to RGB; fine as reflections, and they widen a tiny pool).
SKIMAGE_COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")
SKIMAGE_GREY = ("camera", "clock", "brick", "grass", "gravel", "moon", "coins")


def list_photo_files(folder: Path) -> list[Path]:
    """Image files in `folder` (sorted, not recursive); DereflectError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DereflectError(folder, "not a folder" if folder.exists() else "folder does not exist")
    files = sorted(Path(p) for p in list_images(folder))
    if not files:
        raise DereflectError(folder, f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def read_rgb_uint8(path: Path) -> np.ndarray:
    """HWC uint8 RGB; DereflectError naming the file if it cannot be read."""
    return np.asarray(read_rgb(path))


def shrink_to(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Antialiased downscale (uint8 HWC) so the long side is <= max_side; never upscales."""
    h, w = pixels.shape[:2]
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    size = (max(1, math.floor(w * scale + 0.5)), max(1, math.floor(h * scale + 0.5)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))


def _to_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3], dtype=np.float32) / np.float32(255.0)


def skimage_photos() -> list[np.ndarray]:
    """scikit-image's bundled photos as uint8 HWC RGB."""
    import skimage.data

    out = []
    for name in SKIMAGE_COLOUR + SKIMAGE_GREY:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo pairs: the left view
            img = img[0]
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(img[:, :, :3]))
    return out


def load_photos(folder: Path | None, max_side: int = 512) -> list[np.ndarray]:
    """Photos as float32 HWC RGB in [0,1], long side <= max_side (smaller photos are kept as they
    are). folder None -> scikit-image's bundled photos. Any unreadable file -> DereflectError
    naming it, before any synthesis starts."""
    if max_side < 16:
        raise DereflectError(None, f"max_side must be at least 16 px, got {max_side}")
    raw = skimage_photos() if folder is None else [read_rgb_uint8(p) for p in list_photo_files(Path(folder))]
    return [_to_float(shrink_to(p, max_side)) for p in raw]


def split_photos(photos: Sequence[np.ndarray], val_fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random split of the pool (a photo is its own 'scene' here). At least one photo on each
    side when val_fraction > 0 and there are two or more photos."""
    if not 0.0 <= val_fraction < 1.0:
        raise DereflectError(None, f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(photos)
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    val_idx = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(photos) if i not in val_idx]
    val = [p for i, p in enumerate(photos) if i in val_idx]
    return train, val
