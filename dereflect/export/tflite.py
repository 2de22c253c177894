"""PyTorch student -> LiteRT (TensorFlow Lite) flatbuffer (.tflite), for native Android/iOS apps.

litert-torch (the successor of ai-edge-torch) converts `torch.export` graphs through JAX/StableHLO
to TFLite ops. Two choices follow from what it does with this network:

- Layout: TFLite kernels are NHWC. The student is wrapped with `litert_torch.to_channel_last_io`,
  so the file's input and output are (1, H, W, 3) float32: an Android bitmap's order, and no
  TRANSPOSE ops at the graph's edges. The manifest says NHWC; the runtime backend transposes.
- Shape: fixed (1, S, S, 3), S = the export size. litert-torch 0.10 cannot convert the student
  with dynamic H/W (its JAX lowering of the skip `add` sees unknown dims), and phone delegates
  (GPU, NPU) want static shapes anyway; the runtime's tiler pads tiles to S.

int8: litert-torch's own PT2E path (`PT2EQuantizer` + `QuantConfig`) does not convert this network
(its converter rejects the quantized `tfl.pad`: "quantization parameters violate the same scale
constraint"). Post-training quantization of the fp32 .tflite with ai-edge-quantizer does convert:
its full-integer recipe (`static_wi8_ai8`, calibrated) stays ~6-10 dB PSNR below the ONNX QDQ and
ExecuTorch int8 of the same student (43.5 dB, SSIM drop 0.0013 at 256 px with 16 calibration
images; 37.5 dB and 0.011 > the 0.01 budget at 64 px with 8; int16 activations did no better),
while int8 weights alone keep 54-56 dB. So int8 here is
`dynamic_wi8_afp32`: int8 per-channel weights, activations quantized per inference by XNNPACK's
QD8 kernels, float32 IO, no calibration set (the manifest says so). A phone NPU that needs full
integer should take the ONNX QDQ or ExecuTorch int8 artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError, first_line
from dereflect.export.onnx import colour_example, has_colour_input, quiet

PT2E_NOTE = (
    "litert-torch's PT2E int8 does not convert this network ('tfl.pad' op quantization parameters violate the same scale "
    "constraint); ai-edge-quantizer's full-integer static_wi8_ai8 converts but loses 6-10 dB PSNR (43.5 dB at 256 px, "
    "16 images; 37.5 dB and SSIM drop 0.011 > 0.01 at 64 px, 8 images): int8 = dynamic_wi8_afp32 (int8 weights, "
    "dynamically quantized activations)"
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _convert_fp32(model, side_hw: tuple[int, int], out: Path) -> None:
    """litert-torch conversion of the NHWC-wrapped student at one fixed shape into `out`."""
    import torch

    try:
        import litert_torch
    except ImportError as exc:
        raise DereflectError(None, f"litert-torch is not usable here ({first_line(exc)}): pip install 'dereflect[mobile]'") from None
    h, w = side_hw
    wrapped = litert_torch.to_channel_last_io(model.eval(), args=[0], outputs=[0]).eval()
    example = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(0))
    examples = (example, colour_example(1)) if has_colour_input(model) else (example,)  # a PhotoColourGraph: + photo_colour
    with quiet(stderr=True), torch.no_grad():
        edge = litert_torch.convert(wrapped, examples)
        edge.export(str(out))


def _quantize_int8(float_path: Path, out: Path) -> dict[str, Any]:
    """ai-edge-quantizer dynamic-range int8 of the float model (int8 weights; see the module docstring)."""
    from ai_edge_quantizer import quantizer, recipe

    with quiet(stderr=True):
        qt = quantizer.Quantizer(str(float_path))
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        qt.quantize().export_model(str(out), overwrite=True)
    return {
        "tool": "ai-edge-quantizer dynamic_wi8_afp32",
        "weights": "int8 symmetric per-channel",
        "activations": "int8, quantized per inference (dynamic range); float32 IO",
        "calibration": "none (dynamic range)",
        "note": PT2E_NOTE,
    }


def io_details(path: str | Path) -> dict[str, Any]:
    """Shape, dtype and quantization of the file's image input and output (for the manifest), and of
    the photo-colour input and output of a PhotoColourGraph."""
    from dereflect.runtime.backends.litert_backend import LiteRTRunner

    runner = LiteRTRunner(path, threads=1)

    def one(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero = d["quantization"]
        return {
            "name": d["name"],
            "shape": [int(v) for v in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": scale,
            "zero_point": zero,
        }

    details = {"input": one(runner.inp), "output": one(runner.out)}
    if runner.colour_in is not None:
        details.update(photo_colour=one(runner.colour_in), colour=one(runner.colour_out))
    return details


def export_tflite(model, path: str | Path, precision: str, side_hw: tuple[int, int]) -> dict[str, Any]:
    """Convert (and for int8 quantize) into `path` atomically; returns what the manifest records."""
    import tempfile

    from dereflect.files import atomic_output

    path = Path(path)
    multiple = int(getattr(model, "size_multiple", 8))
    if side_hw[0] % multiple or side_hw[1] % multiple:
        raise DereflectError(None, f"LiteRT fixed shape {side_hw[0]}x{side_hw[1]} is not a multiple of {multiple}")
    if precision not in ("fp32", "int8"):
        raise DereflectError(None, f"LiteRT export takes fp32 or int8, not {precision}")
    with tempfile.TemporaryDirectory(prefix="dereflect-tflite-") as tmp:
        built = Path(tmp) / "fp32.tflite"
        _convert_fp32(model, side_hw, built)
        quant: dict[str, Any] = {"weights": "fp32", "activations": "fp32"}
        if precision == "int8":
            quant = _quantize_int8(built, Path(tmp) / "int8.tflite")
            built = Path(tmp) / "int8.tflite"
        with atomic_output(path) as out:
            out.write_bytes(built.read_bytes())
    return {
        "layout": "NHWC",
        "shapes": {"mode": "fixed", "sizes_hw": [list(side_hw)], "batch": 1},
        "io": io_details(path),
        "quantization": quant,
        "converted_from": "torch.export via litert-torch (to_channel_last_io)",
        "versions": {k: v for k in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer") if (v := _version(k))},
    }


def tflite_runner(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """`run(NCHW float32) -> NCHW float32` through ai-edge-litert's interpreter, for the parity gate."""
    from dereflect.runtime.backends.litert_backend import LiteRTRunner

    return LiteRTRunner(path)
