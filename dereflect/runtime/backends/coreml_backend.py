"""Core ML: runs an .mlpackage through Apple's runtime, which exists only on macOS.

Elsewhere it stops with one clear error (coremltools converts on Linux but cannot predict).
Shapes follow the manifest: a flexible range (tiles no larger than its max side) or a list of
enumerated sizes (every tile is the largest of them, padded as needed).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError
from dereflect.runtime.backends.base import COLOUR_INPUT, COLOUR_OUTPUT, Backend, io_names, size_multiple

NOT_MACOS = (
    "Core ML runs only on macOS (this machine runs {system}); use the ONNX or OpenVINO export of the "
    "same model, or the checkpoint with --backend torch"
)


class CoreMLBackend(Backend, name="coreml", module="coremltools", extra="coreml"):
    """An MLModel on all compute units; batches are run one image at a time."""

    @classmethod
    def problem(cls) -> str | None:
        if sys.platform != "darwin":
            return NOT_MACOS.format(system=platform.system() or sys.platform)
        return super().problem()

    def __init__(self, path: Path, manifest: dict[str, Any] | None = None, device: str | None = None) -> None:
        problem = self.problem()
        if problem is not None:
            raise DereflectError(path, problem)
        import coremltools as ct

        manifest = manifest or {}
        constraints = manifest.get("constraints") or {}
        self.multiple = size_multiple(manifest)
        self.max_side = constraints.get("max_side")
        sizes = constraints.get("sizes_hw")
        self.fixed = tuple(max(sizes, key=lambda hw: hw[0] * hw[1])) if sizes else None
        try:
            self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
        except Exception as exc:  # noqa: BLE001
            raise DereflectError(path, f"Core ML cannot load this package ({exc})") from None
        self.input_name, self.output_name = io_names(manifest)
        if COLOUR_INPUT in {f.name for f in self.model.get_spec().description.input}:
            self.colour_input = COLOUR_INPUT  # a photo's tiles share one colour estimate (base.photo_context)
        self.detail = f"coremltools {ct.__version__} (compute units ALL)"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        outs = [self.model.predict(self.feeds(batch[i : i + 1], self.input_name))[self.output_name] for i in range(len(batch))]
        return np.concatenate([np.asarray(o, dtype=np.float32) for o in outs])

    def estimate_colour(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(self.own_feeds(batch, self.input_name))[COLOUR_OUTPUT], dtype=np.float32)
