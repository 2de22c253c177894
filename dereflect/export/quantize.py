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
from dereflect.export.onnx import INPUT_NAME, check_onnx, quiet


def session(path: str | Path, threads: int | None = None):
    """A CPU InferenceSession (quiet logger); the runner every ONNX/ORT parity check uses."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """fp32 ONNX -> fp16 weights and compute, float32 `input`/`transmission` kept."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    with quiet():
        half = float16.convert_float_to_float16(model, keep_io_types=True)
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
    """CalibrationDataReader over NCHW images, one at a time (batch 1, like deployment)."""

    def __init__(self, images: np.ndarray) -> None:
        self._images = images
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._images):
            return None
        self._i += 1
        return {INPUT_NAME: np.ascontiguousarray(self._images[self._i - 1 : self._i], dtype=np.float32)}

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

    def as_dict(self) -> dict[str, object]:
        return {
            "format": "QDQ",
            "activations": self.activations,
            "weights": self.weights,
            "symmetric_activations": self.symmetric,
            "calibration_method": self.method,
            "excluded_nodes": list(self.excluded),
        }


def quantize_int8(
    src: str | Path, dst: str | Path, calibration: np.ndarray, exclude: Iterable[str] = (), symmetric: bool = False
) -> Int8Settings:
    """Static QDQ INT8 of an fp32 ONNX, calibrated on `calibration` (N,3,H,W float32 [0,1]).

    symmetric=False: u8 asymmetric activations (CPU/mobile). True: s8 symmetric activations and
    weights, the explicit-quantization graph TensorRT builds INT8 engines from.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    excluded = tuple(exclude)
    with tempfile.TemporaryDirectory(prefix="dereflect-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        with quiet():
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(dst),
                _Reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=list(excluded),
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            )
    check_onnx(onnx.load(str(dst)), Path(dst))
    return Int8Settings(activations="QInt8 symmetric" if symmetric else "QUInt8", symmetric=symmetric, excluded=excluded)


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
            return lambda batch: dict(zip(wanted, sess.run(wanted, {INPUT_NAME: batch})))

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
