"""PyTorch: runs a student checkpoint (.safetensors) as it was trained, on CUDA when present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dereflect.runtime.backends.base import Backend


class TorchBackend(Backend, name="torch", extra="torch"):
    """A loaded student on one device; `infer` is a forward pass under inference mode."""

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
            return self.model(x).float().cpu().numpy()
