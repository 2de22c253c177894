"""Runtime: one Session API over every backend, any resolution.

    from dereflect.runtime import load
    session = load("default")      # the shipped student's fastest verified artifact here (OpenVINO / ONNX Runtime INT8)
    clean = session.run(photo)     # HxWx3 uint8 -> uint8 (uint16, float32 too)
    print(session.summary())       # "openvino int8 (student-nano, parity passed)"; describe(): the whole line
    load("artifacts/student-nano-fp32.onnx"), load("default", backend="torch")   # an artifact, the checkpoint, an export folder

Nothing here imports torch unless the torch backend runs: the slim install (`pip install
dereflect`) has none.

Modules: session (load, Session), resolve (what a model path is, which backend runs it: read from
the export format table), tiling (padding, tiles, feathered blending, bounded memory), backends/
(the Backend contract, one module per runtime, the name -> class registry), cli (`dereflect remove`).
"""

from dereflect.runtime.backends import BACKENDS, Backend, backend_problem
from dereflect.runtime.session import Session, load

__all__ = ["BACKENDS", "Backend", "Session", "backend_problem", "load"]
