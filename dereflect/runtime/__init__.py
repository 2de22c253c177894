"""Runtime: one Session API over every backend, any resolution.

    from dereflect.runtime import load
    session = load("artifacts/student-nano-fp32.onnx")   # or "default", a checkpoint, an export folder
    clean = session.run(photo)                           # HxWx3 uint8 -> uint8 (uint16, float32 too)
    print(session.backend, session.describe())

Modules: session (load, Session, the backend protocol), resolve (what a model path is, which
backend runs it), tiling (padding, tiles, feathered blending, bounded memory), one module per
backend (torch, onnxruntime, openvino, coreml, tensorrt), cli (`dereflect remove`).
"""

from dereflect.runtime.resolve import BACKENDS, backend_problem
from dereflect.runtime.session import BackendSession, Session, load

__all__ = ["BACKENDS", "BackendSession", "Session", "backend_problem", "load"]
