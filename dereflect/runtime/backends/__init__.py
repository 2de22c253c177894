"""Backends: one module per runtime, one base class (base.Backend), one name -> class registry.

`REGISTRY` lists the backends fastest first: `--backend auto` in an export folder takes the first
(artifact, backend) that runs here. A new runtime is one module here, one line below and its name
in the format rows (dereflect/export/formats.py) of what it runs.
"""

from __future__ import annotations

from dereflect.errors import UsageError
from dereflect.export.formats import BACKEND_NAMES
from dereflect.runtime.backends.base import Backend, check_image_input
from dereflect.runtime.backends.coreml_backend import CoreMLBackend
from dereflect.runtime.backends.executorch_backend import ExecuTorchBackend
from dereflect.runtime.backends.litert_backend import LiteRTBackend
from dereflect.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from dereflect.runtime.backends.openvino_backend import OpenVinoBackend
from dereflect.runtime.backends.tensorrt_backend import TensorRTBackend
from dereflect.runtime.backends.torch_backend import TorchBackend

#: name -> class, fastest first (TensorRT on CUDA, Core ML on macOS, OpenVINO, ONNX Runtime, then the
#: phone runtimes ExecuTorch and LiteRT, whose artifacts are for apps: on a desktop they run for the
#: parity gate and the benchmark, slower than OpenVINO/ONNX Runtime here; PyTorch last).
REGISTRY: dict[str, type[Backend]] = {
    cls.name: cls
    for cls in (TensorRTBackend, CoreMLBackend, OpenVinoBackend, OnnxRuntimeBackend, ExecuTorchBackend, LiteRTBackend, TorchBackend)
}
#: What `--backend` takes, in the format table's order.
BACKENDS: tuple[str, ...] = BACKEND_NAMES


def get_backend(name: str) -> type[Backend]:
    """The class registered as `name`; a UsageError (exit 2) naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(None, f"unknown backend '{name}'; choose auto or one of {', '.join(BACKENDS)}") from None


def speed_rank(name: str) -> int:
    """0 for the fastest backend; used to rank artifacts in an export folder."""
    return list(REGISTRY).index(name)


def backend_problem(name: str) -> str | None:
    """Why `name` cannot run on this machine, or None when it can."""
    return get_backend(name).problem()


__all__ = ["BACKENDS", "REGISTRY", "Backend", "backend_problem", "check_image_input", "get_backend", "speed_rank"]
