"""PyTorch student -> Core ML ML program (.mlpackage), validated as far as the platform allows.

coremltools has no ONNX frontend, so the student is traced (torch.jit.trace) and converted.
IO stays float32 (`TensorType(dtype=np.float32)`) whatever the compute precision, so callers feed
the same arrays as for every other format. H and W are flexible: `RangeDim(8..max_side)` by
default (Core ML cannot express "multiple of 8": the manifest records it and the runtime pads),
or `EnumeratedShapes` (a list of sizes), or one fixed size (`--fixed-shape`): the Neural Engine
runs only fixed or enumerated shapes, a range keeps the model on the GPU/CPU. Batch is 1.
Precisions: fp32 = FLOAT32 compute; fp16 = FLOAT16 compute; int8 = FLOAT16 compute with INT8
per-channel weights (`linear_quantize_weights`; Core ML quantizes activations only on macOS).
`palettize` (n bits, k-means LUT) compresses the weights instead of linear INT8.

Linux cannot run Core ML: `validate_coreml` checks what can be checked (spec IO names, types and
shape ranges, the op list, the weights, a save/reload round trip) and parity is recorded as
"not run: needs macOS"; on macOS `coreml_runner` predicts and the gate compares as elsewhere.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dereflect.errors import DereflectError
from dereflect.export.onnx import (
    COLOUR_INPUT,
    COLOUR_OUTPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    colour_example,
    graph_feeds,
    has_colour_input,
    quiet,
)

MAX_SIDE = 4096
DEFAULT_ENUMERATED = ((256, 256), (384, 512), (512, 384), (512, 512), (768, 1024), (1024, 768), (1024, 1024))
# MIL ops the student may lower to; anything else means the graph changed shape (or the converter did).
EXPECTED_OPS = {
    "conv",
    "leaky_relu",
    "add",
    "concat",
    "upsample_bilinear",
    "resize_bilinear",
    "clip",
    "cast",
    "const",
    "mul",
    "sub",
    "relu",
    "upsample_nearest_neighbor",
    # the MobileNetV2 students' global colour path: pooled features, the 12 parameters sliced per channel,
    # and its PhotoColourGraph's flat `colour` output
    "reduce_mean",
    "slice_by_index",
    "reshape",
}


def _coremltools():
    with quiet(stderr=True):  # its import prints "Failed to load _MLModelProxy" lines on Linux
        import coremltools as ct
    return ct


def export_coreml(
    model,
    path: str | Path,
    precision: str,
    shapes: str = "range",
    example_size: int = 64,
    enumerated: Sequence[tuple[int, int]] = DEFAULT_ENUMERATED,
    palettize: int | None = None,
) -> dict[str, object]:
    """Convert and save `path` (.mlpackage); returns what the manifest records."""
    import torch

    ct = _coremltools()
    path = Path(path)
    multiple = int(getattr(model, "size_multiple", 8))
    if shapes == "range":
        dim = lambda: ct.RangeDim(lower_bound=multiple, upper_bound=MAX_SIDE, default=256)  # noqa: E731
        shape: object = (1, 3, dim(), dim())
        shape_info: dict[str, object] = {"mode": "range", "min_side": multiple, "max_side": MAX_SIDE}
    elif shapes in ("enumerated", "fixed"):
        bad = [hw for hw in enumerated if hw[0] % multiple or hw[1] % multiple]
        if bad:
            raise DereflectError(None, f"{shapes} Core ML shapes must be multiples of {multiple}: {bad}")
        if shapes == "fixed":
            if len(enumerated) != 1:
                raise DereflectError(None, f"a fixed Core ML shape is one (H, W), got {list(enumerated)}")
            shape = (1, 3, *enumerated[0])
        else:
            shape = ct.EnumeratedShapes(shapes=[(1, 3, h, w) for h, w in enumerated], default=(1, 3, *enumerated[0]))
        shape_info = {"mode": shapes, "sizes_hw": [list(hw) for hw in enumerated], "input_shapes": [[1, 3, *hw] for hw in enumerated]}
    else:
        raise DereflectError(None, f"unknown Core ML shape mode '{shapes}' (range, enumerated or fixed)")
    example = torch.rand(1, 3, example_size, example_size, generator=torch.Generator().manual_seed(0))
    if shapes == "fixed":  # trace at the one size the package takes
        example = torch.rand(1, 3, *enumerated[0], generator=torch.Generator().manual_seed(0))
    examples = (example,)
    inputs = [ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)]
    outputs = [ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)]
    if has_colour_input(model):  # a PhotoColourGraph (models/mobile_student.py): + photo_colour in, colour out
        examples = (example, colour_example(1))
        inputs.append(ct.TensorType(name=COLOUR_INPUT, shape=(1, 13, 1, 1), dtype=np.float32))
        outputs.append(ct.TensorType(name=COLOUR_OUTPUT, dtype=np.float32))
    with quiet(stderr=True), torch.no_grad():
        traced = torch.jit.trace(model.eval(), examples)
        mlmodel = ct.convert(
            traced,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            inputs=inputs,
            outputs=outputs,
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        )
    compression: dict[str, object] = {"weights": "fp32" if precision == "fp32" else "fp16"}
    if palettize:
        from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

        with quiet(stderr=True):
            mlmodel = palettize_weights(
                mlmodel, OptimizationConfig(global_config=OpPalettizerConfig(nbits=palettize, mode="kmeans", weight_threshold=256))
            )
        compression = {"weights": f"palettized {palettize}-bit (k-means LUT)", "weight_threshold": 256}
    elif precision == "int8":
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        with quiet(stderr=True):
            mlmodel = linear_quantize_weights(
                mlmodel,
                OptimizationConfig(
                    global_config=OpLinearQuantizerConfig(
                        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=256
                    )
                ),
            )
        compression = {"weights": "int8 linear symmetric per-channel", "activations": "fp16", "weight_threshold": 256}
    mlmodel.short_description = f"dereflect student: {INPUT_NAME} (1,3,H,W) float32 [0,1] -> {OUTPUT_NAME}; H, W multiples of {multiple}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet(stderr=True):
        mlmodel.save(str(path))
    return {
        "compute_precision": "FLOAT32" if precision == "fp32" else "FLOAT16",
        "shapes": shape_info,
        "compression": compression,
        "deployment_target": "iOS16",
        "converted_from": "torch.jit.trace",
    }


def _ops(spec) -> Counter[str]:
    """Histogram of MIL op types in every function and nested block of an ML program."""
    counts: Counter[str] = Counter()

    def walk(block) -> None:
        for op in block.operations:
            counts[op.type] += 1
            for inner in op.blocks:
                walk(inner)

    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            walk(block)
    return counts


def validate_coreml(path: str | Path, precision: str, fixed_hw: tuple[int, int] | None = None) -> dict[str, object]:
    """Everything checkable without Core ML's runtime; DereflectError on the first problem.
    fixed_hw: the package must take exactly (1,3,H,W) (else flexible H/W: a range or enumerated).
    Returns the facts (IO, op histogram, compression ops) for the manifest."""
    ct = _coremltools()
    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise DereflectError(path, "not an .mlpackage (no Manifest.json)")
    try:
        with quiet(stderr=True):
            spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:  # noqa: BLE001 - protobuf/IO errors of a damaged package
        raise DereflectError(path, f"Core ML package does not load: {exc}") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise DereflectError(path, f"expected an ML program, got {spec.WhichOneof('Type')}")
    desc = spec.description
    io_facts = {}
    colour = [f.name for f in desc.input] == [INPUT_NAME, COLOUR_INPUT]  # a PhotoColourGraph
    for side, expected in (
        ("input", [INPUT_NAME, COLOUR_INPUT] if colour else [INPUT_NAME]),
        ("output", [OUTPUT_NAME, COLOUR_OUTPUT] if colour else [OUTPUT_NAME]),
    ):
        features = list(getattr(desc, side))
        if [f.name for f in features] != expected:
            raise DereflectError(path, f"Core ML {side}s are {[f.name for f in features]}, expected {expected}")
        for feature in features:
            array = feature.type.multiArrayType
            if array.dataType != ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32:
                raise DereflectError(path, f"Core ML {side} '{feature.name}' is not float32")
            io_facts[feature.name] = {
                "shape": list(array.shape),
                "ranges": [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges],
                "enumerated": [list(s.shape) for s in array.enumeratedShapes.shapes],
            }
    inp = io_facts[INPUT_NAME]
    if len(inp["shape"]) != 4 or inp["shape"][:2] != [1, 3]:
        raise DereflectError(path, f"Core ML input shape {inp['shape']} is not (1,3,H,W)")
    if fixed_hw is not None:
        if inp["ranges"] or inp["enumerated"] or inp["shape"] != [1, 3, *fixed_hw]:
            raise DereflectError(
                path,
                f"Core ML input is {inp['shape']} (flexible: {bool(inp['ranges'] or inp['enumerated'])}), expected fixed [1, 3, {fixed_hw[0]}, {fixed_hw[1]}]",
            )
    elif not inp["ranges"] and not inp["enumerated"]:
        raise DereflectError(path, "Core ML input has a fixed size: expected flexible H and W")
    ops = _ops(spec)
    unexpected = sorted(o for o in ops if o not in EXPECTED_OPS and not o.startswith("constexpr_"))
    if unexpected:
        raise DereflectError(path, f"Core ML program has unexpected ops {unexpected} (the student only needs {sorted(EXPECTED_OPS)})")
    if ops.get("conv", 0) == 0:
        raise DereflectError(path, "Core ML program has no conv op")
    compressed = sum(n for o, n in ops.items() if o.startswith("constexpr_"))
    if precision == "int8" and compressed == 0:
        raise DereflectError(path, "int8 Core ML model has no compressed (constexpr_*) weights")
    weights = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    if not weights.is_file() or weights.stat().st_size == 0:
        raise DereflectError(path, "Core ML package has no weights")
    return {
        "io": io_facts,
        "ops": dict(sorted(ops.items())),
        "compressed_weight_ops": compressed,
        "spec_version": spec.specificationVersion,
        "reloaded": True,
    }


def coreml_runner(path: str | Path) -> Callable[..., np.ndarray]:
    """`run(NCHW float32, photo-colour feeds or None) -> NCHW float32` through Core ML (macOS only;
    batch looped one by one)."""
    if sys.platform != "darwin":
        raise DereflectError(path, "Core ML predicts only on macOS")
    ct = _coremltools()
    model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    names = [f.name for f in model.get_spec().description.input]

    def run(batch: np.ndarray, colour: np.ndarray | None = None) -> np.ndarray:
        outs = [
            model.predict(graph_feeds(names, batch[i : i + 1], None if colour is None else colour[i : i + 1]))[OUTPUT_NAME]
            for i in range(len(batch))
        ]
        return np.concatenate([np.asarray(o, dtype=np.float32) for o in outs])

    return run
