"""PyTorch: runs a student checkpoint (.safetensors) as it was trained, on CUDA when present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class TorchBackend:
    """A loaded student on one device; `infer` is a forward pass under inference mode."""

    name = "torch"
    min_side = 0
    max_side: int | None = None
    fixed: tuple[int, int] | None = None

    def __init__(self, model: Any, device: str | None = None) -> None:
        """`model`: a checkpoint path or an already built student (nn.Module)."""
        import torch

        from dereflect.models import load_checkpoint

        if isinstance(model, (str, Path)):
            model = load_checkpoint(model, expect="student")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        current = next(iter(model.parameters()), torch.empty(0)).device
        if current != self.device:
            import copy

            model = copy.deepcopy(model)  # .to() moves in place: never move the caller's module
        self.model = model.to(self.device).eval()
        self.multiple = int(getattr(model, "size_multiple", 8))
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"{torch.get_num_threads()} threads"
        self.detail = f"torch {torch.__version__.split('+')[0]} on {self.device.type} ({where})"
        self._torch = torch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            return self.model(x).float().cpu().numpy()
