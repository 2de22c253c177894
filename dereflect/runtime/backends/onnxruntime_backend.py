"""ONNX Runtime: runs .onnx (fp32, fp16 with float32 IO, INT8 QDQ) and .ort files.

Execution providers are taken in order of speed from what this onnxruntime build offers:
CUDA, then Core ML (macOS), then the CPU, which is always there. Session options an artifact
needs (an .ort file saved with runtime optimisations) come from its manifest. A fixed-shape
artifact (`--fixed-shape`) declares its one (H, W) as `fixed`: the tiler feeds it tiles of that size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError, first_line
from dereflect.runtime.backends.base import (
    COLOUR_INPUT,
    COLOUR_OUTPUT,
    Backend,
    check_image_input,
    fixed_size,
    input_frames,
    io_names,
    size_multiple,
)

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CoreMLExecutionProvider")


class OnnxRuntimeBackend(Backend, name="onnxruntime"):
    """One InferenceSession, created once; `infer` feeds the manifest's input name."""

    def __init__(self, path: Path, manifest: dict[str, Any] | None = None, device: str | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Memory patterns plan one buffer layout per shape; with dynamic H/W they only add to the
        # peak (1024x1024 tile, this CPU: 782 MB with, 446 MB without, same speed).
        opts.enable_mem_pattern = False
        if threads:
            opts.intra_op_num_threads = threads
        manifest = manifest or {}
        for key, value in (manifest.get("ort_format", {}) or {}).get("session_options", {}).items():
            opts.add_session_config_entry(str(key), str(value))
        available = ort.get_available_providers()
        providers = [p for p in PREFERRED_PROVIDERS if p in available] + ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad files
            raise DereflectError(path, f"ONNX Runtime cannot load this model ({first_line(exc, limit=10_000)})") from None
        self.input_name, self.output_name = io_names(manifest, self.session.get_inputs()[0].name, self.session.get_outputs()[0].name)
        info = next((i for i in self.session.get_inputs() if i.name == self.input_name), self.session.get_inputs()[0])
        dtype = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}.get(info.type, info.type)
        self.frames = input_frames(manifest)
        check_image_input(path, info.name, [d if isinstance(d, int) else None for d in info.shape], dtype, self.frames)
        if COLOUR_INPUT in {i.name for i in self.session.get_inputs()}:
            self.colour_input = COLOUR_INPUT  # a photo's tiles share one colour estimate (base.photo_context)
        self.multiple = size_multiple(manifest)
        self.fixed = fixed_size(manifest, [d if isinstance(d, int) else None for d in info.shape])
        self.where = self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        shape = f", fixed input 1x3x{self.fixed[0]}x{self.fixed[1]}" if self.fixed else ""
        self.detail = f"onnxruntime {ort.__version__} [{', '.join(self.session.get_providers())}]{shape}"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], self.feeds(batch, self.input_name))[0]

    def estimate_colour(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([COLOUR_OUTPUT], self.own_feeds(batch, self.input_name))[0]
