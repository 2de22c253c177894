"""Runtime: one Session API over every backend, any resolution.

    from dereflect.runtime import load
    session = load("artifacts/student-nano-fp32.onnx")   # or "default", a checkpoint, an export folder
    clean = session.run(photo)                           # HxWx3 uint8 -> uint8 (uint16, float32 too)
    print(session.backend, session.describe())

Modules: session (load, Session), resolve (what a model path is, which backend runs it: read from
the export format table), tiling (padding, tiles, feathered blending, bounded memory), backends/
(the Backend contract, one module per runtime, the name -> class registry), cli (`dereflect remove`).
"""

from dereflect.runtime.backends import BACKENDS, Backend, backend_problem
from dereflect.runtime.session import Session, load

__all__ = ["BACKENDS", "Backend", "Session", "backend_problem", "load"]
