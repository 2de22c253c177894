"""One Session API over every backend: HWC images in, HWC images out, any resolution.

A backend only has to run the network: `infer((N,3,H,W) float32 in [0,1]) -> same shape`
(the contract is backends/base.py's Backend). Everything between a photo and that call lives here and in
tiling.py, once for all backends: dtype conversion (uint8 -> uint8, uint16 -> uint16,
float -> float32), reflect padding to the network's multiple, and tiling with feathered blending
above a size budget. `load()` resolves the model (resolve.py), builds the backend once, and
returns a Session that is reused for every image: no per-image set-up cost.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError, UsageError
from dereflect.runtime import tiling
from dereflect.runtime.backends import Backend, get_backend
from dereflect.runtime.backends.torch_backend import TorchBackend
from dereflect.runtime.resolve import ModelRef, checkpoint_info, resolve

#: When the image size changes and either image has this many pixels, free heap pages are handed
#: back to the OS first (see release_free_memory). Repeated runs of one size (benchmarks) never trim.
TRIM_MIN_PIXELS = 256 * 256


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc malloc_trim(0); a no-op elsewhere).

    Why: every photo of a new size frees big buffers of other sizes. glibc raises its mmap
    threshold after each big free, so later buffers up to 32 MB come from the heap, and the holes
    they leave between live blocks are never returned: RSS of `dereflect remove` grew from 760 MB
    to 1,330 MB (median) over 400 photos that repeat the same 100 sizes (tools/soak.py), with no
    Python object leaking. Session.run trims when the size changes, so `remove` stays flat while
    a benchmark (one size, many runs) is untouched. Fixing the mmap threshold instead
    (MALLOC_MMAP_THRESHOLD_) also bounds it but makes every big buffer page-fault: +75 % time at
    512 px here. DEREFLECT_NO_TRIM=1 turns trimming off.
    """
    if _MALLOC_TRIM is not None and not os.environ.get("DEREFLECT_NO_TRIM"):
        _MALLOC_TRIM(0)


class Session:
    """A model loaded on one backend. `run(image)` removes the reflection from one HWC image.

    backend: the backend's name ("onnxruntime", ...); model: what was loaded (ModelRef);
    tile / overlap / max_pixels: the tiling policy (see tiling.plan_tiles).
    """

    def __init__(
        self,
        impl: Backend,
        ref: ModelRef | None,
        *,
        tile: int | None = None,
        overlap: int = tiling.DEFAULT_OVERLAP,
        max_pixels: int = tiling.DEFAULT_MAX_PIXELS,
    ) -> None:
        if tile is not None and tile < 16:
            raise UsageError(None, f"tile size must be at least 16 pixels, got {tile}")
        if overlap < 0:
            raise UsageError(None, f"tile overlap must be >= 0, got {overlap}")
        if getattr(impl, "frames", None):  # its manifest says (N, T, 3, H, W): not a photo model
            where = ref.path if ref is not None else None
            raise DereflectError(where, f"a burst model ({impl.frames} frames in): run it with dereflect remove --burst (dereflect.burst)")
        self.impl = impl
        self.model = ref
        self.backend: str = impl.name
        self.tile = tile
        self.overlap = overlap
        self.max_pixels = max_pixels
        self._last_size: tuple[int, int] | None = None

    def plan(self, height: int, width: int, tile: int | None = None) -> tiling.TilePlan:
        """The tile grid `run` would use for an image of this size."""
        impl = self.impl
        return tiling.plan_tiles(
            height,
            width,
            multiple=impl.multiple,
            tile=tile if tile is not None else self.tile,
            overlap=self.overlap,
            max_pixels=self.max_pixels,
            max_side=impl.max_side,
            fixed=impl.fixed,
            min_side=impl.min_side,
        )

    def run(self, image: np.ndarray, *, tile: int | None = None, on_tile: Callable[[], None] | None = None) -> np.ndarray:
        """HxWx3 uint8 -> uint8, uint16 -> uint16, float in [0,1] -> float32; same height and width.

        tile: override the session's tile size for this image; on_tile: called after each tile.
        """
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise DereflectError(None, f"expected an HxWx3 RGB image, got an array of shape {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise DereflectError(None, f"empty image ({arr.shape[1]}x{arr.shape[0]} pixels)")
        if arr.dtype not in (np.uint8, np.uint16) and not np.issubdtype(arr.dtype, np.floating):
            raise DereflectError(None, f"pixels must be uint8, uint16 or float in [0,1], got {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise DereflectError(None, "image contains NaN or infinite values")
        plan = self.plan(arr.shape[0], arr.shape[1], tile)
        if (
            self._last_size is not None
            and self._last_size != arr.shape[:2]
            and max(self._last_size[0] * self._last_size[1], arr.shape[0] * arr.shape[1]) >= TRIM_MIN_PIXELS
        ):
            release_free_memory()  # a new size: the last image's big buffers no longer fit anything
        self._last_size = arr.shape[:2]
        photo = getattr(self.impl, "photo_context", None)
        with photo(arr) if photo is not None and plan.count > 1 else nullcontext():  # one image-level estimate for all tiles
            return tiling.run_tiled(self.impl.infer, arr, plan, on_tile, stream=getattr(self.impl, "infer_stream", None))

    __call__ = run

    def summary(self) -> str:
        """'openvino int8 (student-nano, parity passed)': backend, precision, network, parity verdict."""
        return self.model.summary(self.backend) if self.model is not None else f"{self.backend} fp32 (in-memory model)"

    def describe(self) -> str:
        """One line for people: the summary, the backend's version and device, the model file, the tiling policy."""
        model = self.model.path.name if self.model is not None else "in-memory model"  # format, precision, parity: in the summary
        if self.model is not None and self.model.kind == "checkpoint":
            info = checkpoint_info(self.model.path)
            if info.get("model"):
                model = f"{self.model.path.name} ({info['model']}{', step ' + str(info['step']) if 'step' in info else ''})"
        if self.impl.fixed is not None:  # a fixed-shape artifact: every tile (and any smaller image) padded to it
            policy = f"fixed {self.impl.fixed[0]}x{self.impl.fixed[1]} tiles"
        elif self.tile is not None:
            policy = f"tiles of {self.tile} px"
        else:
            policy = f"tiles of {tiling.DEFAULT_TILE} px above {self.max_pixels / 1e6:.1f} MP"
        detail = self.impl.detail or self.backend
        notes = "".join(f"; {n}" for n in (self.model.notes if self.model is not None else []))
        return f"{self.summary()} | {detail} | model {model}{notes} | {policy}, overlap {self.overlap} px"

    def __repr__(self) -> str:
        return f"<Session {self.describe()}>"


def load(
    model: str | os.PathLike[str] | Any = "default",
    backend: str = "auto",
    *,
    verify: bool = True,
    precision: str | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    max_pixels: int = tiling.DEFAULT_MAX_PIXELS,
    device: str | None = None,
) -> Session:
    """Load a model once and return a Session to run on many images.

    model: "default" (the shipped student), a checkpoint (.safetensors), an exported artifact
    (.onnx, .ort, OpenVINO IR folder or .xml, .mlpackage, .engine), a folder an export wrote, or
    a student nn.Module (torch backend). backend: "auto" (the fastest that runs the model here;
    Session.backend says which) or torch / onnxruntime / openvino / coreml / tensorrt.
    verify=False is the explicit override that runs an artifact whose sha256 does not match its
    manifest (or that has none). precision: in an export folder, use only fp32 / fp16 / int8.
    tile: always tile with this side; otherwise images over max_pixels are tiled. overlap: pixels
    neighbouring tiles share; None: what the model needs (a shipped student's measured overlap), else
    tiling.DEFAULT_OVERLAP.
    device: torch device ("cpu", "cuda") or OpenVINO device ("CPU").
    """
    if not isinstance(model, (str, os.PathLike)):
        if backend not in ("auto", "torch"):
            raise UsageError(None, f"an in-memory model runs on the torch backend, not '{backend}'")
        overlap = tiling.DEFAULT_OVERLAP if overlap is None else overlap
        return Session(TorchBackend(model, device=device), None, tile=tile, overlap=overlap, max_pixels=max_pixels)
    ref, name = resolve(Path(model) if str(model) != "default" else "default", backend, precision, verify)
    impl = get_backend(name)(ref.path, ref.manifest, device=device)
    if overlap is None:
        overlap = ref.tile_overlap or tiling.DEFAULT_OVERLAP
    return Session(impl, ref, tile=tile, overlap=overlap, max_pixels=max_pixels)
