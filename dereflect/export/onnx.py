"""PyTorch student -> one ONNX file: dynamic N, H, W; checked, shape-inferred, simplified.

torch.onnx's dynamo exporter is told that H and W are multiples of 8 (`8 * Dim`), which is the
graph's real constraint (three stride-2 convs, then concats with upsampled features); the
manifest records it, and the runtime pads to it. Nodes are renamed after the PyTorch module that
made them (`decoder.head/Conv`), so per-layer reports and `--int8-exclude` speak the model's
own names, and the exporter's per-node metadata (stack traces with local paths) is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from dereflect.errors import DereflectError, first_line
from dereflect.runtime.backends.base import COLOUR_INPUT, COLOUR_OUTPUT, own_colour  # a PhotoColourGraph's second input and output

INPUT_NAME = "input"
OUTPUT_NAME = "transmission"
DEFAULT_OPSET = 20
MAX_SIDE = 8192  # upper bound given to the exporter for H and W (dynamic up to this)


@contextlib.contextmanager
def quiet(stderr: bool = False) -> Iterator[io.StringIO]:
    """Converters narrate every step on stdout (and warn): keep the console ours. Yields what was
    printed, for error messages; logging levels are restored on exit."""
    loggers = [
        logging.getLogger(n)
        for n in ("", "torch.onnx", "torch._export", "nncf", "coremltools", "ort_format_model", "ort_format_model.utils")
    ]
    levels = [lg.level for lg in loggers]
    buffer = io.StringIO()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(buffer))
            if stderr:
                stack.enter_context(contextlib.redirect_stderr(buffer))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield buffer
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _rename_dims(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """`8*h8` -> `height` etc. on graph inputs/outputs (value_info is recomputed later)."""
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def _module_node_names(model: onnx.ModelProto, wrapper: str = "") -> None:
    """Name nodes `<module path>/<OpType>` from the exporter's name scopes, unique with `_k`.
    `wrapper`: the attribute a wrapping module keeps the student in (PhotoColourGraph: "student"),
    left out of the paths, so layer names are the student's own whatever graph they are in."""
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes", "")
        module = node.name.split("/")[0] if "/" in node.name else "model"
        if scopes.startswith("["):
            parts = [s.strip(" '\"") for s in scopes.strip("[]").split(",")]
            modules = [p for p in parts[:-1] if p]
            module = modules[-1] if modules else "model"
            if wrapper and (module == wrapper or module.startswith(wrapper + ".")):
                module = module.removeprefix(wrapper).removeprefix(".") or "model"
        base = f"{module}/{node.op_type}"
        counts[base] += 1
        node.name = base if counts[base] == 1 else f"{base}_{counts[base] - 1}"
        del node.metadata_props[:]
        node.doc_string = ""
    for value in model.graph.value_info:
        del value.metadata_props[:]
    del model.graph.value_info[:]


def check_onnx(model: onnx.ModelProto, where: Path | None = None) -> onnx.ModelProto:
    """onnx.checker (full) + strict shape inference; DereflectError naming the file on failure."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise DereflectError(where, f"ONNX model does not validate: {first_line(exc, limit=10_000)}") from None


_EXPORTED: dict[str, bytes] = {}  # weights+config+opset digest -> file bytes, for repeat exports in one process


def _model_digest(model, opset: int) -> str:
    digest = hashlib.sha256(f"{type(model).__qualname__}|{getattr(model, 'config', None)!r}|{opset}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_onnx(model, path: str | Path, opset: int = DEFAULT_OPSET, example_size: int = 64) -> Path:
    """Export a student to `path` (fp32, one file, no external data) and check it.

    The graph: `input` (N,3,H,W) float32 [0,1] -> `transmission` (N,3,H,W), N/H/W dynamic,
    H and W multiples of `model.size_multiple`. A PhotoColourGraph adds `photo_colour` (N,13,1,1)
    in and `colour` (N,12) out. The same weights exported again in the same
    process (benchmark, tests: the dynamo exporter takes seconds) reuse the first file's bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = _model_digest(model, opset)
    if key in _EXPORTED:
        path.write_bytes(_EXPORTED[key])
        return path
    _export(model, path, opset, example_size)
    _EXPORTED[key] = path.read_bytes()
    return path


def _export(model, path: Path, opset: int, example_size: int) -> None:
    import onnxslim
    import torch
    from torch.export import Dim

    multiple = int(getattr(model, "size_multiple", 8))
    side = max(multiple, example_size - example_size % multiple)
    frames = getattr(model, "input_frames", None)  # a burst model: (N, T, 3, H, W), T fixed (models/burst.py)
    lead = (2, 3) if frames is None else (2, int(frames), 3)
    example = torch.rand(*lead, side, side + multiple, generator=torch.Generator().manual_seed(0))
    hw = len(lead)  # index of the H axis
    batch = Dim("batch", min=1, max=1024)
    h8 = Dim("h_blocks", min=1, max=MAX_SIDE // multiple)
    w8 = Dim("w_blocks", min=1, max=MAX_SIDE // multiple)
    args = list(inspect.signature(model.forward).parameters)
    dynamic = {args[0]: {0: batch, hw: multiple * h8, hw + 1: multiple * w8}}
    examples: tuple = (example,)
    names = ([INPUT_NAME], [OUTPUT_NAME])
    if has_colour_input(model):
        examples = (example, colour_example(example.shape[0]))
        dynamic[args[1]] = {0: batch}
        names = ([INPUT_NAME, COLOUR_INPUT], [OUTPUT_NAME, COLOUR_OUTPUT])
    model = model.eval()
    with quiet(), torch.no_grad():
        program = torch.onnx.export(
            model,
            examples,
            dynamo=True,
            external_data=False,
            opset_version=opset,
            input_names=names[0],
            output_names=names[1],
            optimize=True,
            verbose=False,
            dynamic_shapes=dynamic,
        )
    proto = program.model_proto
    _rename_dims(proto, {f"{multiple}*h_blocks": "height", f"{multiple}*w_blocks": "width"})
    wrapper = "student" if len(examples) == 2 else ""
    _module_node_names(proto, wrapper)
    with quiet():
        proto = onnxslim.slim(proto)
    _module_node_names(proto, wrapper)  # nodes the simplifier made get a name in the same style
    proto.producer_name = "dereflect"
    what = (
        "student; input {} (N,3,H,W)"
        if frames is None
        else f"burst model; input {{}} (N,{frames},3,H,W), reference frame {int(frames) // 2}"
    )
    proto.doc_string = f"dereflect {what.format(INPUT_NAME)} float32 in [0,1], H and W multiples of {multiple}"
    if len(examples) == 2:
        proto.doc_string += f"; {COLOUR_INPUT} (N,13,1,1): the photo's colour transform and its weight (0: the input's own)"
    proto = check_onnx(proto, path)
    if proto.ByteSize() > 2**31 - 1024:
        raise DereflectError(path, "model is over 2 GB: it cannot be one ONNX file")
    onnx.save_model(proto, str(path))
    _check_runs(path, model, examples)


def has_colour_input(model) -> bool:
    """Is `model` exported with the photo-colour input (a PhotoColourGraph)?"""
    from dereflect.models.mobile_student import PhotoColourGraph

    return isinstance(model, PhotoColourGraph)


def colour_example(n: int):
    """(n,13,1,1) feeds for tracing and checking: the first sample weight 0, the others weight 1
    with a colour transform that is not their own, so both paths are in the graph and checked."""
    import torch

    feed = torch.zeros(n, 13, 1, 1)
    feed[1:, :12] = 0.05 * torch.randn(n - 1, 12, 1, 1, generator=torch.Generator().manual_seed(1))
    feed[1:, 12] = 1.0
    return feed


def graph_feeds(input_names: list[str], batch: np.ndarray, colour: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The feeds of one run: the image batch, and, when the graph has the photo-colour input, `colour`
    ((N,13,1,1)) or weight 0 (the input's own estimate: the student as trained)."""
    feeds = {INPUT_NAME if INPUT_NAME in input_names else input_names[0]: batch}
    if COLOUR_INPUT in input_names:
        feeds[COLOUR_INPUT] = colour if colour is not None else own_colour(batch.shape[0])
    return feeds


def _check_runs(path: Path, model, examples: tuple) -> None:
    """The exported file must load in ONNX Runtime and agree with PyTorch on the example (fp32)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (e.numpy() for e in examples))))
    with torch.no_grad():
        want = model(*examples)
    want = [w.numpy() for w in (want if isinstance(want, tuple) else (want,))]
    err = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    if not np.isfinite(err) or err > 1e-3:
        raise DereflectError(path, f"exported graph disagrees with PyTorch (max |diff| {err:.3g})")


def parse_hw(text: str, option: str = "--fixed-shape") -> tuple[int, int]:
    """`512x384` -> (512, 384) = (height, width); UsageError saying what is wrong."""
    from dereflect.errors import UsageError

    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(None, f"{option} '{text}' is not HEIGHTxWIDTH in pixels (e.g. 512x512)")
    h, w = (int(p) for p in parts)
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise UsageError(None, f"{option} '{text}': height and width must be 1..{MAX_SIDE} px")
    return h, w


def check_fixed_shape(hw: tuple[int, int], multiple: int, model_name: str = "the model", option: str = "--fixed-shape") -> None:
    """A fixed H x W must be a multiple of the network's stride (what the manifest records as
    `constraints.multiple_of`): the graph's concats fail on anything else. UsageError with the
    nearest shapes that work."""
    from dereflect.errors import UsageError

    h, w = hw
    if h % multiple or w % multiple:

        def near(n: int) -> str:
            lo, hi = max(multiple, n - n % multiple), n - n % multiple + multiple
            return f"{lo}" if lo == n else f"{lo} or {hi}"

        raise UsageError(
            None,
            f"{option} {h}x{w}: height and width must be multiples of {multiple} ({model_name}'s H/W multiple); "
            f"nearest: height {near(h)}, width {near(w)}",
        )


def fix_shape(src: str | Path, dst: str | Path, hw: tuple[int, int]) -> Path:
    """A dynamic-shape graph (any precision: fp32, fp16 with float32 IO, INT8 QDQ) -> the same
    graph with `input` fixed to (1, 3, H, W), every intermediate shape inferred static, checked.

    Why: NNAPI and the Core ML EP take only nodes whose input shapes are static; with dynamic H/W
    ORT's mobile checker counts 0 of the student's nodes for them, fixed it counts all (one
    partition). Done with ORT's own tool functions (`make_dynamic_shape_fixed`), so the weights
    and node names stay those of the dynamic artifact (same calibration, same `--int8-exclude`).
    """
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    src, dst = Path(src), Path(dst)
    proto = onnx.load(str(src))
    del proto.graph.value_info[:]
    _name_empty_roi(proto)
    try:
        make_input_shape_fixed(proto.graph, INPUT_NAME, [1, 3, *hw])
        if any(i.name == COLOUR_INPUT for i in proto.graph.input):
            make_input_shape_fixed(proto.graph, COLOUR_INPUT, [1, 13, 1, 1])
        fix_output_shapes(proto)
    except (ValueError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise DereflectError(src, f"cannot fix the input shape to 1x3x{hw[0]}x{hw[1]}: {first_line(exc, limit=10_000)}") from None
    proto.doc_string = f"dereflect student; input {INPUT_NAME} (1,3,{hw[0]},{hw[1]}) float32 in [0,1] (fixed shape)"
    proto = check_onnx(proto, src)
    dynamic = [v.name for v in [*proto.graph.output, *proto.graph.value_info] if not _static(v)]
    if dynamic:
        raise DereflectError(src, f"shapes still dynamic after fixing the input to {hw[0]}x{hw[1]}: {', '.join(dynamic[:5])}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(dst))
    return dst


EMPTY_ROI = "resize_roi_empty"


def _name_empty_roi(proto: onnx.ModelProto) -> None:
    """Give every Resize whose optional `roi` input is left out (`""`) an empty float constant.

    Why: ORT's mobile checker looks each node input up by name to see if its shape is static; an
    omitted optional input has no name, so every Resize counted as "dynamic input" and the
    student split into 4 partitions (51 of 56 nodes). An empty roi is what the legacy exporter
    wrote; Resize ignores roi unless the mode is tf_crop_and_resize, so outputs do not change.
    """
    resizes = [n for n in proto.graph.node if n.op_type == "Resize" and len(n.input) > 1 and n.input[1] == ""]
    if not resizes:
        return
    if all(i.name != EMPTY_ROI for i in proto.graph.initializer):
        proto.graph.initializer.append(onnx.helper.make_tensor(EMPTY_ROI, onnx.TensorProto.FLOAT, [0], []))
    for node in resizes:
        node.input[1] = EMPTY_ROI


def _static(value: onnx.ValueInfoProto) -> bool:
    dims = value.type.tensor_type.shape.dim
    return value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims)


def graph_summary(path: str | Path) -> dict[str, object]:
    """Opset, op histogram and IO shapes of an ONNX file (for the manifest and the tests)."""
    proto = onnx.load(str(path), load_external_data=False)

    def shape(v: onnx.ValueInfoProto) -> list[object]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "ops": dict(sorted(Counter(n.op_type for n in proto.graph.node).items())),
        "inputs": {v.name: shape(v) for v in proto.graph.input},
        "outputs": {v.name: shape(v) for v in proto.graph.output},
    }
