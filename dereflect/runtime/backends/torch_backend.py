"""PyTorch: runs a student checkpoint (.safetensors) as it was trained, on CUDA when present."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.runtime.backends.base import Backend

#: Long side of the downscaled copy a photo's image-level estimate is computed on (`photo_context`).
PHOTO_SIDE = 512


class TorchBackend(Backend, name="torch", extra="torch"):
    """A loaded student on one device; `infer` is a forward pass under inference mode."""

    _colour: Any = None  # the photo's image-level colour transform while its tiles run

    def __init__(self, path: Path | Any, manifest: dict[str, Any] | None = None, device: str | None = None) -> None:
        """`path`: a checkpoint path or an already built student (nn.Module)."""
        import torch

        from dereflect.models import load_checkpoint

        model = load_checkpoint(path, expect="student") if isinstance(path, (str, Path)) else path
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        current = next(iter(model.parameters()), torch.empty(0)).device
        if current != self.device:
            import copy

            model = copy.deepcopy(model)  # .to() moves in place: never move the caller's module
        self.model = model.to(self.device).eval()
        self.multiple = int(getattr(model, "size_multiple", 8))
        self.where = self.device.type
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"{torch.get_num_threads()} threads"
        self.detail = f"torch {torch.__version__.split('+')[0]} on {self.device.type} ({where})"
        self._torch = torch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            out = self.model(x) if self._colour is None else self.model(x, colour=self._colour.expand(x.shape[0], -1, -1, -1))
            return out.float().cpu().numpy()

    @contextmanager
    def photo_context(self, image: np.ndarray) -> Iterator[None]:
        """A student with a global colour path gets one estimate per photo, shared by all its tiles:
        computed on a copy downscaled to PHOTO_SIDE (subsampled to at most twice that first, so no
        image-sized float copy is made), padded to the network's multiple."""
        if getattr(self.model, "photo_colour", None) is None or getattr(self.model, "colour", None) is None:
            yield
            return
        from dereflect.images import to_float
        from dereflect.models.blocks import pad_to_multiple

        torch = self._torch
        h, w = image.shape[:2]
        step = max(1, max(h, w) // (2 * PHOTO_SIDE))
        small = torch.from_numpy(np.ascontiguousarray(to_float(image[::step, ::step]).transpose(2, 0, 1)))[None]
        scale = PHOTO_SIDE / max(small.shape[2:])
        with torch.inference_mode():
            if scale < 1:
                size = (max(1, round(small.shape[2] * scale)), max(1, round(small.shape[3] * scale)))
                small = torch.nn.functional.interpolate(small, size=size, mode="bilinear", antialias=True, align_corners=False)
            padded, _ = pad_to_multiple(small.to(self.device), self.multiple)
            self._colour = self.model.photo_colour(padded)
        try:
            yield
        finally:
            self._colour = None
