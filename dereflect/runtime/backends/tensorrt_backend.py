"""TensorRT: runs a serialized .engine on a CUDA GPU (TensorRT 10 tensor API, torch buffers).

Needs the `tensorrt` package and a CUDA GPU; elsewhere one clear error says which is missing.
The engine's optimisation profile bounds the tile size (max) and the smallest canvas (min).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError, first_line
from dereflect.runtime.backends.base import COLOUR_INPUT, COLOUR_OUTPUT, Backend, io_names, size_multiple


class TensorRTBackend(Backend, name="tensorrt", extra="tensorrt"):
    """A deserialized engine and one execution context."""

    @classmethod
    def problem(cls) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - PyPI's stub packages fail in several ways
            return (
                f"TensorRT is not usable here (`import tensorrt` failed: {first_line(exc, limit=10_000)}); it needs an "
                "NVIDIA GPU with CUDA and pip install 'dereflect[tensorrt]' from NVIDIA's package index"
            )
        try:
            import torch

            if torch.cuda.is_available():
                return None
        except Exception:  # noqa: BLE001
            pass
        return "TensorRT needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False)"

    def __init__(self, path: Path, manifest: dict[str, Any] | None = None, device: str | None = None) -> None:
        problem = self.problem()
        if problem is not None:
            raise DereflectError(path, problem)
        import tensorrt as trt
        import torch

        manifest = manifest or {}
        self.input_name, self.output_name = io_names(manifest)
        self.multiple = size_multiple(manifest)
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise DereflectError(path, "not a TensorRT engine for this TensorRT version and GPU (rebuild it here)")
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_side, self.max_side = max(lo[2], lo[3]), min(hi[2], hi[3])
        self.context = self.engine.create_execution_context()
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if COLOUR_INPUT in names:
            self.colour_input = COLOUR_INPUT  # a photo's tiles share one colour estimate (base.photo_context)
        self._torch = torch
        self.detail = f"tensorrt {trt.__version__} on {torch.cuda.get_device_name(0)}"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.feeds(batch, self.input_name))[0]

    def estimate_colour(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.own_feeds(batch, self.input_name))[1]

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """One execution: (transmission, the colour estimate or None when the graph has none)."""
        torch = self._torch
        inputs = {name: torch.from_numpy(a).cuda().contiguous() for name, a in feeds.items()}
        x = inputs[self.input_name]
        y = torch.empty_like(x)
        colour = torch.empty((x.shape[0], 12), device=x.device) if self.colour_input else None
        for name, tensor in inputs.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.context.set_tensor_address(self.output_name, y.data_ptr())
        if colour is not None:
            self.context.set_tensor_address(COLOUR_OUTPUT, colour.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise DereflectError(None, "TensorRT execution failed")
        stream.synchronize()
        return y.cpu().numpy(), colour.cpu().numpy() if colour is not None else None
