"""ONNX -> fp16 / INT8 (ONNX Runtime's tools), the ORT format, and a per-layer INT8 diagnosis.

- fp16: onnxconverter-common with `keep_io_types` (callers keep feeding float32); the stale
  value_info the exporter leaves would make the converter mistype Resize's casts, so it is
  dropped first and shapes are re-inferred after.
- INT8: static QDQ, QUInt8 activations with QInt8 per-channel weights (s8 activations ran
  slower than fp32 on x86 CPUs, TOOLCHAIN.md), after `quant_pre_process(skip_symbolic_shape=True)`
  (symbolic inference gives up on dynamic H/W). TensorRT wants symmetric s8 activations instead:
  `symmetric=True` makes that graph.
- Diagnosis: when INT8 misses its budget, every tensor of the fp32 graph is made a graph output
  in both models (QDQ keeps the fp32 tensor names) and compared on the same images; the layers
  that *add* the most error (error of the output minus the worst error of its inputs) are the
  ones to exclude (Polygraphy's layer-wise comparison, done with ONNX Runtime alone).
- Recovery (`recover_int8`, on by default when the first INT8 build misses its SSIM budget): a
  greedy loop over *layers* (`layer_of`: a module's Conv and its activation, `colour.mlp`, or the
  graph's top-level ops `model`). The layers are ranked once by what quantizing only their
  output tensors does to the network's output (`rank_by_output`: every op counts, not only Conv;
  the colour path's per-photo matrix and the full-resolution arithmetic that applies it are not
  convolutions, and an error the rest of the network absorbs ranks low). Each round rebuilds
  with each of the few worst kept in float (alone, and with the layers that read its outputs,
  since ORT quantizes a tensor when any of its ends is quantized), measures the real SSIM drop
  and the float work of each (Conv MACs, other ops' elements: deterministic, unlike a timing on
  a loaded CPU), and keeps the cheapest build within the target (the budget less a margin) or
  else the one removing the most drop per unit of float work; it stops within the target, at
  a few layers, or when no candidate helps; then, if still short, it tries Percentile calibration
  (ORT's histogram calibrator) on what it kept. Every trial is in the manifest.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from dereflect.errors import DereflectError, UsageError
from dereflect.export.onnx import COLOUR_INPUT, INPUT_NAME, check_onnx, graph_feeds, quiet


def session(path: str | Path, threads: int | None = None):
    """A CPU InferenceSession (quiet logger); the runner every ONNX/ORT parity check uses."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feeds(sess, batch: np.ndarray) -> dict[str, np.ndarray]:
    """An ONNX Runtime session's feeds for an image batch (the photo-colour input, if any, at weight 0)."""
    return graph_feeds([i.name for i in sess.get_inputs()], batch)


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """fp32 ONNX -> fp16 weights and compute, float32 `input`/`transmission` kept. The photo-colour
    blend (`photo_blend/*`, models/mobile_student.py PhotoBlend) stays float32, as in INT8."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    blend = [n.name for n in model.graph.node if n.name.startswith("photo_blend/")]
    with quiet():
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=blend)
    half = check_onnx(half, Path(dst))
    onnx.save_model(half, str(dst))
    return Path(dst)


def conv_nodes(path: str | Path) -> list[str]:
    """Names of the Conv nodes (what INT8 exclusion usually targets), in graph order."""
    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"]


def resolve_exclude(patterns: Sequence[str], node_names: Sequence[str]) -> list[str]:
    """`--int8-exclude` entries -> node names. An entry is a node name (`decoder.head/Conv`) or a
    module path (`decoder.head`, `decoder` = all of it); one that matches nothing is a usage error."""
    chosen: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        hits = [n for n in node_names if n == pattern or n.startswith(pattern + "/") or n.startswith(pattern + ".")]
        if not hits:
            convs = [n.split("/")[0] for n in node_names if n.endswith("/Conv")]
            raise UsageError(None, f"--int8-exclude '{pattern}' matches no layer; layers: {', '.join(convs)}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


class _Reader:
    """CalibrationDataReader over NCHW images, one at a time (batch 1, like deployment), with their
    photo-colour feeds (N,13,1,1) for a graph that takes them (export/onnx.py, COLOUR_INPUT)."""

    def __init__(self, images: np.ndarray, colours: np.ndarray | None = None) -> None:
        self._images = images
        self._colours = colours
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._images):
            return None
        self._i += 1
        i = self._i - 1
        feeds = {INPUT_NAME: np.ascontiguousarray(self._images[i : i + 1], dtype=np.float32)}
        if self._colours is not None:
            feeds[COLOUR_INPUT] = np.ascontiguousarray(self._colours[i : i + 1], dtype=np.float32)
        return feeds

    def rewind(self) -> None:
        self._i = 0


@dataclass
class Int8Settings:
    """What the manifest records about an INT8 build."""

    activations: str = "QUInt8"
    weights: str = "QInt8 per-channel"
    symmetric: bool = False
    method: str = "MinMax"
    excluded: tuple[str, ...] = ()
    recovery: dict[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "format": "QDQ",
            "activations": self.activations,
            "weights": self.weights,
            "symmetric_activations": self.symmetric,
            "calibration_method": self.method,
            "excluded_nodes": list(self.excluded),
        }
        if self.recovery is not None:
            out["recovery"] = self.recovery
        return out


#: ORT calibration methods `quantize_int8` takes; Percentile keeps the 99.999th percentile of |x|.
CALIBRATION_METHODS = ("MinMax", "Percentile")
PERCENTILE = 99.999


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    calibration: np.ndarray,
    exclude: Iterable[str] = (),
    symmetric: bool = False,
    method: str = "MinMax",
    colours: np.ndarray | None = None,
) -> Int8Settings:
    """Static QDQ INT8 of an fp32 ONNX, calibrated on `calibration` (N,3,H,W float32 [0,1]) and, for
    a graph with the photo-colour input, `colours` (N,13,1,1; models/mobile_student.py photo_feeds).

    symmetric=False: u8 asymmetric activations (CPU/mobile). True: s8 symmetric activations and
    weights, the explicit-quantization graph TensorRT builds INT8 engines from.
    method: "MinMax" (the default) or "Percentile" (ranges at the 99.999th percentile).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    excluded = tuple(exclude)
    if method not in CALIBRATION_METHODS:
        raise UsageError(None, f"INT8 calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got '{method}'")
    extra: dict[str, object] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if method == "Percentile":
        extra["CalibPercentile"] = PERCENTILE
    with tempfile.TemporaryDirectory(prefix="dereflect-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        with quiet():
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(dst),
                _Reader(calibration, colours),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod[method],
                nodes_to_exclude=list(excluded),
                extra_options=extra,
            )
    check_onnx(onnx.load(str(dst)), Path(dst))
    method_name = f"Percentile {PERCENTILE}" if method == "Percentile" else method
    return Int8Settings(
        activations="QInt8 symmetric" if symmetric else "QUInt8", symmetric=symmetric, method=method_name, excluded=excluded
    )


def _with_outputs(path: Path, names: Sequence[str], dst: Path) -> tuple[Path, list[str]]:
    """A copy of the model with every tensor in `names` that it produces made a graph output."""
    model = onnx.load(str(path))
    produced = {o for n in model.graph.node for o in n.output}
    present = {o.name for o in model.graph.output}
    added = [n for n in names if n in produced]
    for name in added:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    onnx.save_model(model, str(dst))
    return dst, added


LayerRun = Callable[[np.ndarray], dict[str, np.ndarray]]


def rank_layers(
    fp32_onnx: str | Path, run_float: LayerRun, run_quant: LayerRun, images: np.ndarray, top: int = 5
) -> list[dict[str, object]]:
    """Which layers hurt. Per Conv node of the fp32 ONNX graph: the relative error of its output
    tensor in the quantized model (||q - f|| / ||f|| over `images`), and the error it *adds* over
    the tensor it reads. The runners return {tensor name: array} for whatever tensors they can
    expose; layers missing on either side are left out. Worst first."""
    nodes = [n for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node if n.output and n.output[0]]
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for i in range(len(images)):
        batch = np.ascontiguousarray(images[i : i + 1])
        f_out, q_out = run_float(batch), run_quant(batch)
        for name in f_out.keys() & q_out.keys():
            f, q = f_out[name].astype(np.float64), q_out[name].astype(np.float64)
            if f.shape != q.shape:
                continue
            num[name] = num.get(name, 0.0) + float(((q - f) ** 2).sum())
            den[name] = den.get(name, 0.0) + float((f**2).sum())
    err = {n: (num[n] / den[n]) ** 0.5 if den[n] > 0 else 0.0 for n in num}
    rows = []
    for node in nodes:
        out = node.output[0]
        if node.op_type != "Conv" or out not in err:
            continue
        before = err.get(node.input[0], 0.0)
        rows.append(
            {
                "node": node.name,
                "layer": node.name.split("/")[0],
                "op": node.op_type,
                "rel_error": round(err[out], 5),
                "added_error": round(err[out] - before, 5),
            }
        )
    rows.sort(key=lambda r: r["added_error"], reverse=True)
    return rows[:top]


def layer_report(fp32: str | Path, qdq: str | Path, images: np.ndarray, top: int = 5) -> list[dict[str, object]]:
    """`rank_layers` for an ONNX QDQ model: every tensor of the fp32 graph is made a graph output
    in both models (QDQ keeps the fp32 tensor names) and both run in ONNX Runtime."""
    graph = onnx.load(str(fp32), load_external_data=False).graph
    names = [o for n in graph.node for o in n.output if o]
    with tempfile.TemporaryDirectory(prefix="dereflect-layers-") as tmp:
        f_path, f_names = _with_outputs(Path(fp32), names, Path(tmp) / "f.onnx")
        q_path, q_names = _with_outputs(Path(qdq), names, Path(tmp) / "q.onnx")
        f_sess, q_sess = session(f_path), session(q_path)

        def runner(sess, wanted: list[str]) -> LayerRun:
            return lambda batch: dict(zip(wanted, sess.run(wanted, feeds(sess, batch))))

        return rank_layers(fp32, runner(f_sess, f_names), runner(q_sess, q_names), images, top)


def to_ort_format(src: str | Path, dst: str | Path, target_platform: str = "arm", style: str = "Fixed") -> tuple[Path, Path]:
    """ONNX -> `.ort` for onnxruntime-mobile, with the tool behind
    `python -m onnxruntime.tools.convert_onnx_models_to_ort` (ARM target by default: the phone is
    the consumer; dynamic H/W kept). style "Fixed" bakes the optimisations in; "Runtime" applies
    basic ones and saves the rest for the device to replay, which is what fp16 needs: a Fixed
    conversion on an x86 build (no fp16 Conv kernels) would fold fp16 weights back to fp32.
    Returns (ort file, required-operators config, which a reduced-operator build takes)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="dereflect-ort-") as tmp:
        work = Path(tmp) / "in"
        work.mkdir()
        staged = work / (dst.stem + ".onnx")
        shutil.copyfile(src, staged)
        outdir = Path(tmp) / "out"
        with quiet(stderr=True) as err:
            try:
                convert_onnx_models_to_ort(
                    staged, output_dir=outdir, optimization_styles=[OptimizationStyle[style]], target_platform=target_platform
                )
            except Exception as exc:  # noqa: BLE001 - the tool raises bare RuntimeErrors
                raise DereflectError(src, f"ORT format conversion failed: {exc}") from None
        made = sorted(outdir.glob("*.ort"))
        if len(made) != 1:
            raise DereflectError(src, f"ORT format conversion wrote {len(made)} .ort files ({err.getvalue().strip()[-200:]})")
        config = dst.with_name(dst.stem + ".required_operators.config")
        shutil.move(str(made[0]), dst)
        cfg = next(outdir.glob("*.config"), None)
        if cfg is not None:
            shutil.move(str(cfg), config)
    return dst, config


# ---------------------------------------------------------------------------------------------- recovery
#: The recovery aims this far under the SSIM budget (a fraction of it), so a pass is not a coin toss.
RECOVERY_MARGIN = 0.2
#: At most this many layers kept in float, and this many candidates measured per round.
RECOVERY_MAX_LAYERS = 3
RECOVERY_CANDIDATES = 4


#: Ops whose trailing Sequential index `layer_of` drops: a Conv and its activation are one layer.
_LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "LeakyRelu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "PRelu"}


def layer_of(node_name: str) -> str:
    """The layer a graph node belongs to: its module path (the node name before '/'); for a Conv or
    an activation without a trailing Sequential index, so a Conv and its activation are one layer
    (`dec0.0/Conv` and `dec0.1/LeakyRelu` -> `dec0`; `colour.mlp.2/Conv` -> `colour.mlp`), while a
    block's residual `encoder.features.13/Add` stays its own. Top-level ops -> `model`. OpenVINO op
    names (ONNX name + `/WithoutBiases` ...) map to the same layer."""
    scope, _, rest = node_name.partition("/")
    op = rest.split("/")[0].rstrip("0123456789").rstrip("_")
    head, _, last = scope.rpartition(".")
    return head if head and last.isdigit() and op in _LAYER_OPS else scope


def layer_nodes(node_names: Sequence[str], layers: Iterable[str]) -> list[str]:
    """The nodes of `layers` (exact `layer_of` matches, in graph order)."""
    wanted = set(layers)
    return [n for n in node_names if layer_of(n) in wanted]


def rank_by_output(fp32: str | Path, qdq: str | Path, images: np.ndarray) -> list[dict[str, object]]:
    """Layers (`layer_of`) ranked by what their INT8 activations alone do to the *output*: for each
    layer, the fp32 graph with only that layer's activation tensors quantized (QuantizeLinear +
    DequantizeLinear with the scale and zero point the QDQ build calibrated) is run on `images`,
    and its output compared with fp32 (relative L2 error). An error that the rest of the network
    shrugs off ranks low; one on the full-resolution image path (the colour matrix, the residual
    add) ranks high though its tensors' own relative error is small. Worst first. `consumers`:
    the other layers reading those tensors (ONNX Runtime quantizes a tensor when its producer *or*
    a reader is quantized, so a tensor stays float only with all of them excluded)."""
    from onnx import helper, numpy_helper

    qmodel = onnx.load(str(qdq), load_external_data=False)
    inits = {i.name: i for i in qmodel.graph.initializer}
    params = {
        n.input[0].removesuffix("_QuantizeLinear_Input"): (inits[n.input[1]], inits[n.input[2]])  # a graph output's is renamed so
        for n in qmodel.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits and len(n.input) > 2 and n.input[2] in inits
    }
    fmodel = onnx.load(str(fp32))
    producer = {o: n.name for n in fmodel.graph.node for o in n.output}
    readers: dict[str, set[str]] = {}
    for n in fmodel.graph.node:
        for x in n.input:
            readers.setdefault(x, set()).add(layer_of(n.name))
    groups: dict[str, list[str]] = {}
    for tensor in params:
        if tensor in producer:
            groups.setdefault(layer_of(producer[tensor]), []).append(tensor)
    batches = [np.ascontiguousarray(images[i : i + 1]) for i in range(len(images))]
    base = session(fp32)
    result = fmodel.graph.output[0].name
    ref = [base.run([result], feeds(base, b))[0].astype(np.float64) for b in batches]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dereflect-sens-") as tmp:
        for layer, tensors in groups.items():
            model = onnx.ModelProto()
            model.CopyFrom(fmodel)
            read = result
            for t in tensors:
                scale, zero = params[t]
                sim = f"{t}__int8"
                for node in model.graph.node:
                    node.input[:] = [sim if x == t else x for x in node.input]
                if t == result:  # the graph output itself is quantized: read the dequantized copy
                    read = sim
                    model.graph.output.append(helper.make_empty_tensor_value_info(sim))
                model.graph.initializer.extend(
                    [
                        numpy_helper.from_array(numpy_helper.to_array(scale), f"{t}__s"),
                        numpy_helper.from_array(numpy_helper.to_array(zero), f"{t}__z"),
                    ]
                )
                model.graph.node.extend(
                    [
                        helper.make_node("QuantizeLinear", [t, f"{t}__s", f"{t}__z"], [f"{t}__q"], name=f"{t}__Q"),
                        helper.make_node("DequantizeLinear", [f"{t}__q", f"{t}__s", f"{t}__z"], [sim], name=f"{t}__DQ"),
                    ]
                )
            path = Path(tmp) / "sens.onnx"
            onnx.save_model(_toposorted(model), str(path))
            sess = session(path)
            num = den = 0.0
            for b, r in zip(batches, ref):
                o = sess.run([read], feeds(sess, b))[0].astype(np.float64)
                num, den = num + float(((o - r) ** 2).sum()), den + float((r**2).sum())
            consumers = sorted(set().union(*(readers.get(t, set()) for t in tensors)) - {layer})
            rows.append(
                {
                    "layer": layer,
                    "output_error": round((num / den) ** 0.5 if den else 0.0, 6),
                    "tensors": len(tensors),
                    "consumers": consumers,
                }
            )
    return sorted(rows, key=lambda r: float(r["output_error"]), reverse=True)  # type: ignore[arg-type]


def _toposorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in an order where every input is produced before it is read (ONNX requires it)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        left = []
        for node in pending:
            if all(x in ready for x in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            raise DereflectError(None, "quantization sensitivity graph has a cycle")
        pending = left
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(ordered)
    return copy


@dataclass
class _Trial:
    layers: list[str]
    method: str
    drop: float
    path: Path
    cost: int = 0


def float_costs(fp32: str | Path, image: np.ndarray) -> dict[str, int]:
    """What each node costs if it runs in float, at `image`'s size, deterministically (a timing on a
    loaded CPU would pick a different set of layers run to run): a Conv its multiply-accumulates,
    any other op the elements it writes. Shapes come from one fp32 run with every tensor exposed."""
    graph = onnx.load(str(fp32), load_external_data=False).graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    names = [o for n in graph.node for o in n.output if o]
    with tempfile.TemporaryDirectory(prefix="dereflect-cost-") as tmp:
        path, exposed = _with_outputs(Path(fp32), names, Path(tmp) / "f.onnx")
        sess = session(path)
        shapes = {n: a.shape for n, a in zip(exposed, sess.run(exposed, feeds(sess, np.ascontiguousarray(image[None]))))}
    costs = {}
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        elements = int(np.prod(out))
        weight = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        costs[node.name] = elements * int(np.prod(weight[1:])) if weight else elements
    return costs


def recover_int8(
    src: str | Path,
    dst: str | Path,
    calibration: np.ndarray,
    ssim_drop: Callable[[Path], float],
    first_drop: float,
    target: float,
    node_names: Sequence[str],
    diag_images: np.ndarray,
    exclude: Sequence[str] = (),
    max_layers: int = RECOVERY_MAX_LAYERS,
    candidates: int = RECOVERY_CANDIDATES,
    log: Callable[[str], None] | None = None,
    colours: np.ndarray | None = None,
) -> Int8Settings:
    """Turn an INT8 build that misses its SSIM budget into one within `target` (see the module doc).

    `dst` holds the first attempt (MinMax, `exclude` kept in float) whose measured drop is
    `first_drop`; `ssim_drop(path)` measures a candidate on the parity gate's images. `dst` ends
    up holding the best build found (the first, if nothing helped); the returned settings record
    every trial.

    Per round, the few layers whose INT8 activations alone move the output most are each kept in
    float on top of what earlier rounds kept (alone, and with the layers that read its outputs);
    when some reach `target`, the one with the least float work wins (`float_costs`: a
    full-resolution Conv in float can cost most of INT8's speed-up), else the one that removes the
    most drop per unit of float work goes on to the next round."""
    dst = Path(dst)
    trials: list[dict[str, object]] = []
    costs = float_costs(src, diag_images[0])
    total = sum(costs.values())

    def cost_of(layers: list[str]) -> int:
        return sum(costs.get(n, 0) for n in layer_nodes(node_names, layers))

    best = _Trial([], "MinMax", first_drop, dst)
    ranking: list[dict[str, object]] | None = None
    with tempfile.TemporaryDirectory(prefix="dereflect-recover-") as tmp:

        def trial(layers: list[str], method: str, tag: str, **why: object) -> _Trial:
            path = Path(tmp) / f"{tag}.onnx"
            kept = list(dict.fromkeys([*exclude, *layer_nodes(node_names, layers)]))
            quantize_int8(src, path, calibration, kept, method=method, colours=colours)
            done = _Trial(layers, method, float(ssim_drop(path)), path, cost_of(layers))
            trials.append(
                {
                    "float_layers": layers,
                    "calibration_method": method,
                    "ssim_drop": round(done.drop, 5),
                    "float_cost": _share(done.cost, total),
                    **why,
                }
            )
            if log:
                log(
                    f"  int8 recovery: float {','.join(layers) or '-'}, {method}: SSIM drop {done.drop:.4f}, float cost {_share(done.cost, total)}"
                )
            return done

        for round_no in range(max_layers):
            if best.drop <= target or len(best.layers) >= max_layers:
                break
            if ranking is None:  # once, on the first build (NNCF's accuracy control ranks once too)
                ranking = [r for r in rank_by_output(src, dst, diag_images) if float(r["output_error"]) > 0]  # type: ignore[arg-type]
            ranked = [r for r in ranking if r["layer"] not in best.layers][:candidates]
            options: list[tuple[list[str], object]] = []
            for r in ranked:  # the layer alone, and the layer with its readers (its output tensors then stay float)
                alone = [*best.layers, str(r["layer"])]
                joint = list(dict.fromkeys([*alone, *r["consumers"]]))  # type: ignore[misc]
                for layers in (alone, joint):
                    if len(layers) <= max_layers and all(layers != o[0] for o in options):
                        options.append((layers, r["output_error"]))
            tried = [trial(layers, "MinMax", f"r{round_no}-{i}", output_error_alone=e) for i, (layers, e) in enumerate(options)]
            within = [t for t in tried if t.drop <= target]
            helped = [t for t in tried if t.drop < best.drop]
            if within:  # the cheapest in float, then the fewest layers
                best = min(within, key=lambda t: (t.cost, len(t.layers), t.drop))
            elif helped:  # the most drop removed per float cost; under 2 % of the network's counts as 2 %
                floor, before = 0.02 * total, best.drop
                best = max(helped, key=lambda t: (before - t.drop) / max(t.cost, floor))
            else:
                break  # no candidate helps: more layers in float would only cost speed
        if best.drop > target:
            pct = trial(list(best.layers), "Percentile", "percentile")
            if pct.drop < best.drop:
                best = pct
        if best.path != dst:
            shutil.copyfile(best.path, dst)
    nodes = tuple(dict.fromkeys([*exclude, *layer_nodes(node_names, best.layers)]))
    settings = Int8Settings(method=f"Percentile {PERCENTILE}" if best.method == "Percentile" else best.method, excluded=nodes)
    settings.recovery = {
        "first_attempt": {
            "ssim_drop": round(first_drop, 5),
            "calibration_method": "MinMax",
            "excluded_nodes": list(exclude),
        },
        "float_cost": "share of the network's work the float layers do: Conv multiply-accumulates, other ops' output elements",
        "target_ssim_drop": round(target, 5),
        "selected_on": "the parity gate's validation images",
        "float_layers": best.layers,
        "why": "kept in float: per greedy round, of the layers whose INT8 activations alone move the output most (each alone "
        "and with its readers), the build with the least float work that reached the target, else the most drop removed "
        "per unit of float work; "
        "Percentile calibration only where the target was still missed and it lowered the drop",
        "ssim_drop": round(best.drop, 5),
        "float_share": _share(best.cost, total),
        "within_target": best.drop <= target,
        "trials": trials,
    }
    return settings


def _share(cost: int, total: int) -> str:
    return f"{100.0 * cost / total:.1f} %" if total else "0 %"
