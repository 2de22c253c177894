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

NOT_MACOS = ("Core ML runs only on macOS (this machine runs {system}); use the ONNX or OpenVINO export of the "
             "same model, or the checkpoint with --backend torch")


def coreml_problem() -> str | None:
    """Why Core ML cannot run here, or None."""
    if sys.platform != "darwin":
        return NOT_MACOS.format(system=platform.system() or sys.platform)
    import importlib.util

    if importlib.util.find_spec("coremltools") is None:
        return "coremltools is not installed: pip install 'dereflect[coreml]'"
    return None


class CoreMLBackend:
    """An MLModel on all compute units; batches are run one image at a time."""

    name = "coreml"
    min_side = 0

    def __init__(self, path: Path, manifest: dict[str, Any] | None) -> None:
        problem = coreml_problem()
        if problem is not None:
            raise DereflectError(path, problem)
        import coremltools as ct

        manifest = manifest or {}
        constraints = manifest.get("constraints") or {}
        self.multiple = int(constraints.get("multiple_of", 8))
        self.max_side: int | None = constraints.get("max_side")
        sizes = constraints.get("sizes_hw")
        self.fixed: tuple[int, int] | None = tuple(max(sizes, key=lambda hw: hw[0] * hw[1])) if sizes else None
        try:
            self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
        except Exception as exc:  # noqa: BLE001
            raise DereflectError(path, f"Core ML cannot load this package ({exc})") from None
        self.input_name = (manifest.get("inputs") or [{"name": "input"}])[0]["name"]
        self.output_name = (manifest.get("outputs") or [{"name": "transmission"}])[0]["name"]
        self.detail = f"coremltools {ct.__version__} (compute units ALL)"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        outs = [self.model.predict({self.input_name: batch[i : i + 1]})[self.output_name] for i in range(len(batch))]
        return np.concatenate([np.asarray(o, dtype=np.float32) for o in outs])
