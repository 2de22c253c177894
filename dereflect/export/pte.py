"""PyTorch student -> ExecuTorch program (.pte) with the XNNPACK delegate, for native Android/iOS apps.

ExecuTorch runs `torch.export` graphs directly, so the student is exported once more (not through
ONNX) and lowered with `to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`: every
conv/add/concat/resize that XNNPACK takes becomes one delegate call; what it leaves stays on
ExecuTorch's portable kernels (the manifest lists both).

Shapes: fixed, (1,3,H,W) = the `--fixed-shape` being built, else --size x --size (the parity
set's), and the runtime's tiler feeds tiles of exactly that size. Why not dynamic H/W (which
ExecuTorch takes with `Dim` bounds): XNNPACK then leaves the 5 bilinear upsamples of the student
to ExecuTorch's portable kernels (4 delegate calls instead of 1) and the program ran 2x slower
here (student-nano 512x512 fp32: 358 ms dynamic vs 174 ms fixed; lowering 66 s vs 17 s); fixed,
the whole network is one XNNPACK partition, which is also what phone delegates want.

int8: PT2E static quantization with ExecuTorch's `XNNPACKQuantizer` (s8 symmetric per-channel
weights, s8 activations), calibrated on the same images as the other int8 exports
(export/calib.py), then lowered the same way (quantized convs run as XNNPACK QS8 kernels).

A student with a global colour path is exported as its PhotoColourGraph (second input `photo_colour`,
second output `colour`; models/mobile_student.py), its blend left in float as in every INT8 build.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError, first_line
from dereflect.export.calib import ImageSet
from dereflect.export.onnx import colour_example, has_colour_input, quiet


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _quantize(model, examples: tuple, calib: ImageSet) -> Any:
    """PT2E: export -> prepare (observers) -> calibrate -> convert (Q/DQ around each op)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    graph = torch.export.export(model, examples).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(len(calib)):
            feeds = [calib.images[i : i + 1]] + ([calib.colour[i : i + 1]] if len(examples) == 2 else [])
            prepared(*(torch.from_numpy(np.ascontiguousarray(f)) for f in feeds))
    return convert_pt2e(prepared)


def _delegation(edge) -> dict[str, Any]:
    """What XNNPACK took and what stayed on portable kernels, from the lowered edge graph."""
    graph = edge.exported_program().graph_module.graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegated = sum(1 for n in calls if "executorch_call_delegate" in str(n.target))
    rest = Counter(str(getattr(n.target, "__name__", n.target)) for n in calls if "executorch_call_delegate" not in str(n.target))
    rest.pop("getitem", None)
    return {"delegate": "XnnpackBackend", "delegate_calls": delegated, "portable_ops": dict(sorted(rest.items()))}


def export_pte(model, path: str | Path, precision: str, fixed_hw: tuple[int, int], calib: ImageSet | None = None) -> dict[str, Any]:
    """Export at (1,3,H,W), lower to XNNPACK and write `path` (.pte) atomically; returns what the
    manifest records. `calib`: calibration images at H x W, with their photo-colour feeds for a
    PhotoColourGraph (int8 only)."""
    import torch

    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise DereflectError(None, f"ExecuTorch is not usable here ({first_line(exc)}): pip install 'dereflect[mobile]'") from None
    from dereflect.files import atomic_output

    path = Path(path)
    multiple = int(getattr(model, "size_multiple", 8))
    if fixed_hw[0] % multiple or fixed_hw[1] % multiple:
        raise DereflectError(None, f"ExecuTorch fixed shape {fixed_hw[0]}x{fixed_hw[1]} is not a multiple of {multiple}")
    example = torch.rand(1, 3, *fixed_hw, generator=torch.Generator().manual_seed(0))
    examples = (example, colour_example(1)) if has_colour_input(model) else (example,)
    model = model.eval()
    quant: dict[str, Any] = {"weights": "fp32", "activations": "fp32"}
    with quiet(stderr=True), torch.no_grad():
        if precision == "int8":
            if calib is None or len(calib) == 0:
                raise DereflectError(None, "int8 ExecuTorch export needs calibration images")
            if tuple(calib.images.shape[2:]) != tuple(fixed_hw):
                shape = calib.images.shape
                raise DereflectError(None, f"calibration images are {shape[2]}x{shape[3]}, the program's {fixed_hw[0]}x{fixed_hw[1]}")
            if len(examples) == 2 and calib.colour is None:
                raise DereflectError(None, "int8 ExecuTorch export of a photo-colour graph needs the calibration images' colour feeds")
            model = _quantize(model, examples, calib)
            quant = {
                "tool": "torchao PT2E + executorch XNNPACKQuantizer",
                "weights": "int8 symmetric per-channel",
                "activations": "int8 (static, calibrated)",
                "calibration_images": len(calib),
            }
        elif precision != "fp32":
            raise DereflectError(None, f"ExecuTorch export takes fp32 or int8, not {precision}")
        edge = to_edge_transform_and_lower(torch.export.export(model, examples), partitioner=[XnnpackPartitioner()])
        info = _delegation(edge)
        buffer = edge.to_executorch().buffer
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer)
    return {
        **info,
        "shapes": {"mode": "fixed", "sizes_hw": [list(fixed_hw)], "batch": 1},
        "method": "forward",
        "quantization": quant,
        "versions": {k: v for k in ("executorch", "torchao") if (v := _version(k))},
    }


def pte_runner(path: str | Path) -> Callable[..., np.ndarray]:
    """`run(NCHW float32, photo-colour feeds or None) -> NCHW float32` through ExecuTorch (batch looped
    one by one, by the runtime's backend), for the parity gate."""
    from dereflect.runtime.backends.executorch_backend import ExecuTorchBackend

    backend = ExecuTorchBackend(Path(path))
    return lambda batch, colour=None: backend.run(batch, colour)[0]
