"""ONNX -> OpenVINO IR (a folder with `<name>.xml` + `<name>.bin`): fp32, fp16-compressed, INT8.

`ov.convert_model` reads the fp32 ONNX and keeps N/H/W dynamic. fp16 = weights stored in fp16
(`compress_to_fp16`; the CPU plugin decompresses them). INT8 = NNCF post-training quantization
of the OpenVINO model (MIXED preset: symmetric weights, asymmetric activations, which suits an
image-to-image net whose activations are mostly non-negative) on the same calibration images
as ONNX Runtime's. OpenVINO op names come from the ONNX node names (`decoder.head/Conv`, plus
suffixes like `/WithoutBiases`), so `--int8-exclude` works the same here (NNCF IgnoredScope).
When the first INT8 build misses its SSIM budget, the exporter rebuilds it with NNCF's
accuracy-aware quantization (`nncf.quantize_with_accuracy_control`): `accuracy` gives it the
parity gate's validation images and a score (mean SSIM against ground truth, per image too) and
the drop allowed; NNCF ranks the quantizer groups by how much they cost that score and reverts
the worst to float until the drop is met. Which ops it reverted goes into the manifest.

Parity runs compile with INFERENCE_PRECISION_HINT=f32: on CPUs with AVX-512 BF16 the plugin
would otherwise run bf16 and the fp32 check would measure bf16 rounding.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dereflect.errors import DereflectError
from dereflect.export.onnx import COLOUR_INPUT, INPUT_NAME, OUTPUT_NAME, graph_feeds, quiet


def ir_xml(folder: str | Path) -> Path:
    """The .xml inside an IR folder (exactly one)."""
    folder = Path(folder)
    xmls = sorted(folder.glob("*.xml")) if folder.is_dir() else []
    if len(xmls) != 1 or not xmls[0].with_suffix(".bin").is_file():
        raise DereflectError(folder, "not an OpenVINO IR folder (needs one .xml and its .bin)")
    return xmls[0]


def _ignored_names(model, exclude_nodes: Sequence[str]) -> list[str]:
    """OpenVINO op names that came from the excluded ONNX nodes (name, or name + '/...')."""
    pattern = re.compile("|".join(f"^{re.escape(n)}(/.*)?$" for n in exclude_nodes)) if exclude_nodes else None
    if pattern is None:
        return []
    return [op.get_friendly_name() for op in model.get_ordered_ops() if pattern.match(op.get_friendly_name())]


@dataclass
class AccuracyControl:
    """What `nncf.quantize_with_accuracy_control` measures: images, their ground truth, a per-image
    score (truth CHW, output CHW) -> float, higher better, and the absolute drop allowed."""

    images: np.ndarray
    truth: np.ndarray
    score: Callable[[np.ndarray, np.ndarray], float]
    max_drop: float
    max_iterations: int = 5
    colours: np.ndarray | None = None  # the images' photo-colour feeds, for a graph that takes them


def _items(images: np.ndarray, colours: np.ndarray | None) -> list:
    """NNCF dataset items, batch 1: the image, or {input, photo_colour} for a graph with the colour input."""
    if colours is None:
        return [images[i : i + 1] for i in range(len(images))]
    return [{INPUT_NAME: images[i : i + 1], COLOUR_INPUT: colours[i : i + 1]} for i in range(len(images))]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _reverted(lines: Sequence[str]) -> list[str]:
    """Op names from NNCF's report "N out of M were reverted back to the floating-point precision:\n\tname..."."""
    for line in lines:
        if "reverted back to the floating-point precision" in line:
            return [x.strip() for x in line.split("\n")[1:] if x.strip()]
    return []


def _quantize_with_accuracy_control(
    model, calibration: np.ndarray, accuracy: AccuracyControl, ignored: list[str], colours: np.ndarray | None = None
):
    """NNCF's accuracy-aware PTQ; returns (model, what it reverted, NNCF's report lines)."""
    import nncf
    from nncf.common.logging import nncf_logger

    def validate(compiled, items) -> tuple[float, list[float]]:
        port = compiled.output(OUTPUT_NAME)
        per = [float(accuracy.score(truth, np.asarray(compiled(feed)[port])[0])) for feed, truth in items]
        return float(np.mean(per)), per

    validation = nncf.Dataset(list(zip(_items(accuracy.images, accuracy.colours), accuracy.truth)))
    capture, handlers, level = _Capture(), list(nncf_logger.handlers), nncf_logger.level
    for h in handlers:  # NNCF's own handler holds the real stdout: quiet() cannot redirect it
        nncf_logger.removeHandler(h)
    nncf_logger.addHandler(capture)
    try:
        with quiet(stderr=True):
            nncf_logger.setLevel(logging.INFO)
            quantized = nncf.quantize_with_accuracy_control(
                model,
                nncf.Dataset(_items(calibration, colours)),
                validation,
                validate,
                max_drop=accuracy.max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(calibration),
                ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                    max_num_iterations=accuracy.max_iterations, num_ranking_workers=1
                ),
            )
    finally:
        nncf_logger.removeHandler(capture)
        for h in handlers:
            nncf_logger.addHandler(h)
        nncf_logger.setLevel(level)
    return quantized, _reverted(capture.lines), capture.lines


def export_openvino(
    onnx_fp32: str | Path,
    folder: str | Path,
    precision: str,
    calibration: np.ndarray | None = None,
    exclude_nodes: Sequence[str] = (),
    accuracy: AccuracyControl | None = None,
    colours: np.ndarray | None = None,
) -> dict[str, object]:
    """Write the IR folder; returns what the manifest records about the conversion. `colours`: the
    calibration images' photo-colour feeds (N,13,1,1), for a graph with that input."""
    import openvino as ov

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / (folder.name.removesuffix("_openvino") + ".xml")
    model = ov.convert_model(str(onnx_fp32))
    info: dict[str, object] = {"compress_to_fp16": precision == "fp16"}
    if precision == "int8":
        if calibration is None:
            raise DereflectError(None, "OpenVINO INT8 needs calibration images")
        import nncf

        ignored = _ignored_names(model, exclude_nodes)
        control: dict[str, object] | None = None
        if accuracy is None:
            with quiet(stderr=True):
                nncf.set_log_level(40)  # ERROR: NNCF otherwise logs every skipped quantizer
                model = nncf.quantize(
                    model,
                    nncf.Dataset(_items(calibration, colours)),
                    preset=nncf.QuantizationPreset.MIXED,
                    subset_size=len(calibration),
                    ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                )
        else:
            from dereflect.export.quantize import layer_of

            model, reverted, lines = _quantize_with_accuracy_control(model, calibration, accuracy, ignored, colours)
            control = {
                "tool": "nncf.quantize_with_accuracy_control",
                "max_drop": accuracy.max_drop,
                "drop_type": "ABSOLUTE",
                "metric": "mean SSIM against ground truth on the parity gate's validation images",
                "validation_images": len(accuracy.images),
                "max_iterations": accuracy.max_iterations,
                "reverted_to_float": reverted,
                "float_layers": list(dict.fromkeys(layer_of(n) for n in reverted)),
                "why": "NNCF ranked the quantizer groups by the SSIM they cost and reverted the worst until the drop was met",
                "report": [ln for ln in lines if "drop" in ln.lower() or "reverted" in ln.lower() or "completed" in ln.lower()][:8],
            }
        info.update(
            {
                "quantization": {
                    "tool": "nncf.quantize" if control is None else "nncf.quantize_with_accuracy_control",
                    "preset": "MIXED",
                    "subset_size": len(calibration),
                    "ignored_scope": ignored,
                    "fake_quantize_ops": sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()),
                    **({"accuracy_control": control} if control is not None else {}),
                }
            }
        )
    ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
    info["xml"] = xml.name
    return info


def openvino_runner(
    folder: str | Path, device: str = "CPU", precision_hint: str = "f32", threads: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Compile the IR and return `run(NCHW float32, photo-colour feed or None) -> NCHW float32`."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": precision_hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(ir_xml(folder)), device, config)
    names = {n for n in compiled.input(0).get_names()}
    if INPUT_NAME not in names:
        raise DereflectError(folder, f"IR input is {sorted(names)}, expected '{INPUT_NAME}'")
    output = compiled.output(OUTPUT_NAME)
    request = compiled.create_infer_request()
    inputs = [n for port in compiled.inputs for n in port.get_names()]

    def run(batch: np.ndarray, colour: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(request.infer(graph_feeds(inputs, batch, colour))[output])

    return run


def openvino_layer_report(onnx_fp32: str | Path, folder: str | Path, images: np.ndarray, top: int = 5) -> list[dict[str, object]]:
    """Which layers hurt in an NNCF INT8 IR: the fp32 model (from the ONNX) and the INT8 IR both
    expose every Conv's input and output tensor (OpenVINO keeps the ONNX tensor names) and
    `quantize.rank_layers` compares them."""
    import onnx
    import openvino as ov

    from dereflect.export.quantize import rank_layers

    graph = onnx.load(str(onnx_fp32), load_external_data=False).graph
    names = list(dict.fromkeys(t for n in graph.node if n.op_type == "Conv" for t in (n.input[0], n.output[0])))
    core = ov.Core()

    def runner(model) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        for name in names:
            try:
                model.add_outputs(name)
            except RuntimeError:
                continue  # fused away in this model: compared where both have it
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        ports = {}
        for port in compiled.outputs:
            hit = next((n for n in port.get_names() if n in names), None)
            if hit is not None:
                ports[hit] = port
        request = compiled.create_infer_request()
        inputs = [n for port in compiled.inputs for n in port.get_names()]

        def run(batch: np.ndarray) -> dict[str, np.ndarray]:
            result = request.infer(graph_feeds(inputs, batch))
            return {n: np.asarray(result[p]) for n, p in ports.items()}

        return run

    return rank_layers(onnx_fp32, runner(ov.convert_model(str(onnx_fp32))), runner(core.read_model(str(ir_xml(folder)))), images, top)
