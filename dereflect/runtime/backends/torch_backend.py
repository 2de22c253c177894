"""PyTorch: runs a student checkpoint (.safetensors) as it was trained, on CUDA when present."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.runtime.backends.base import PHOTO_SIDE, Backend


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
        computed on the same downscaled copy the exported graphs use (`tiling.photo_copy`)."""
        if getattr(self.model, "photo_colour", None) is None or getattr(self.model, "colour", None) is None:
            yield
            return
        from dereflect.runtime.tiling import photo_copy

        torch = self._torch
        small = torch.from_numpy(photo_copy(image, PHOTO_SIDE, self.multiple)).to(self.device)
        with torch.inference_mode():
            self._colour = self.model.photo_colour(small)
        try:
            yield
        finally:
            self._colour = None
