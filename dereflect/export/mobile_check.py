"""ONNX Runtime's mobile usability checker, run in-process and read back as numbers.

`python -m onnxruntime.tools.check_onnx_model_mobile_usability MODEL.onnx` is how ORT tells
whether the NNAPI (Android) and Core ML (iOS) execution providers can take a model: how many
partitions, how many of the nodes, which ops they refuse, how many nodes only fail because an
input shape is dynamic. It reports through Python logging, so this module runs the same
function (`usability_checker.analyze_model`, the BASIC optimisation pass included, as the `.ort`
conversion does) with a logger of its own and parses the lines. The export records the result
in the manifest of every fixed-shape ONNX/ORT artifact; a test asserts full coverage.

Only the "as is" analysis is kept for each EP (the tool goes on to say what fixed shapes would
give; that is what `--fixed-shape` builds, and the fixed artifact's own report says it).
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

#: The EPs the tool checks, as it names them in its log.
EPS = ("NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram")

_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR):\s*")  # the command-line tool's logging.basicConfig prefix
_SECTION = re.compile(r"^Checking (NNAPI|CoreML NeuralNetwork|CoreML MLProgram)$")
_PARTITIONS = re.compile(r"^(\d+) partitions with a total of (\d+)/(\d+) nodes can be handled by the (.+) EP\.$")
_SIZES = re.compile(r"^Partition sizes: \[([\d, ]*)\]$")
_UNSUPPORTED_OPS = re.compile(r"^Unsupported ops: (.*)$")
_BY_OP = re.compile(r"^Unsupported nodes due to operator=(\d+)$")
_BY_SHAPE = re.compile(r"^Unsupported nodes due to input having a dynamic shape=(\d+)$")
_VERDICT = re.compile(r"^Model should perform well with (.+) as is: (\w+)$")


def parse_log(text: str) -> dict[str, dict[str, Any]]:
    """The tool's log (in-process, or the command line's `INFO:  ...` lines) -> {EP: {partitions,
    nodes, supported_nodes, percent, partition_sizes, unsupported_ops, unsupported_by_op,
    unsupported_by_dynamic_shape, verdict}} ("as is" only). An EP whose section is missing or cut
    short is left out (callers treat that as a failure)."""
    results: dict[str, dict[str, Any]] = {}
    ep: str | None = None
    for raw in text.splitlines():
        line = _LEVEL.sub("", raw.strip()).strip()
        if m := _SECTION.match(line):
            ep = m.group(1)
            results[ep] = {"unsupported_ops": [], "unsupported_by_op": 0, "unsupported_by_dynamic_shape": 0, "partition_sizes": []}
            continue
        if ep is None:
            continue
        row = results[ep]
        if line.startswith("--------") or line.startswith("================"):
            ep = None  # what follows is the "if the shapes were fixed" estimate, or the next EP
        elif (m := _PARTITIONS.match(line)) and "partitions" not in row:
            parts, supported, nodes = (int(g) for g in m.group(1, 2, 3))
            row.update(partitions=parts, supported_nodes=supported, nodes=nodes, percent=round(100.0 * supported / max(nodes, 1), 2))
        elif m := _SIZES.match(line):
            row["partition_sizes"] = [int(v) for v in m.group(1).split(",") if v.strip()]
        elif m := _UNSUPPORTED_OPS.match(line):
            row["unsupported_ops"] = sorted(v for v in m.group(1).split(",") if v)
        elif m := _BY_OP.match(line):
            row["unsupported_by_op"] = int(m.group(1))
        elif m := _BY_SHAPE.match(line):
            row["unsupported_by_dynamic_shape"] = int(m.group(1))
        elif m := _VERDICT.match(line):
            row["verdict"] = m.group(2)
            ep = None
    return {k: v for k, v in results.items() if "partitions" in v and "verdict" in v}


def run_checker(model: str | Path) -> str:
    """Run ORT's checker on an ONNX file in this process; its full log text (INFO level)."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    from dereflect.export.onnx import quiet

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("dereflect.mobile_check")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        with quiet(stderr=True):
            usability_checker.analyze_model(Path(model).resolve(), skip_optimize=False, logger=logger)
    finally:
        logger.removeHandler(handler)
    return buffer.getvalue()


def check(model: str | Path) -> dict[str, Any]:
    """What the manifest records: the checker's per-EP numbers, and whether every EP the phone
    runtimes use (NNAPI, Core ML MLProgram) takes the whole graph as one partition."""
    import onnxruntime

    eps = parse_log(run_checker(model))
    missing = [ep for ep in EPS if ep not in eps]
    full = [ep for ep, r in eps.items() if r["partitions"] == 1 and r["supported_nodes"] == r["nodes"]]
    return {
        "tool": f"onnxruntime {onnxruntime.__version__} tools.check_onnx_model_mobile_usability",
        "checked": Path(model).name,
        "eps": eps,
        "one_partition_all_nodes": sorted(full),
        "unparsed_eps": missing,
    }


def summary(result: dict[str, Any]) -> str:
    """One line for logs and the README: `NNAPI 1 partition 56/56 (100%), ...`."""
    parts = []
    for ep in EPS:
        r = result["eps"].get(ep)
        if r is None:
            parts.append(f"{ep}: not reported")
            continue
        parts.append(f"{ep} {r['partitions']} partition(s) {r['supported_nodes']}/{r['nodes']} ({r['percent']:.0f}%)")
    return ", ".join(parts)


def ort_graph(path: str | Path) -> dict[str, Any]:
    """The main graph of an `.ort` file, read from its flatbuffer (the checker takes ONNX only):
    node count, `domain:op` types and the graph input's shape, so a test can check that the
    `.ort` holds the same graph the checker analysed (no CPU-only contrib ops, static input)."""
    from onnxruntime.tools.ort_format_model import ort_flatbuffers_py  # noqa: F401 - puts `ort_flatbuffers_py` on sys.path
    from ort_flatbuffers_py import fbs

    buffer = bytearray(Path(path).read_bytes())
    if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(buffer, 0):
        raise ValueError(f"{path}: not an ORT format model")
    graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buffer, 0).Model().Graph()
    ops: dict[str, int] = {}
    for i in range(graph.NodesLength()):
        node = graph.Nodes(i)
        key = f"{node.Domain().decode() or 'ai.onnx'}:{node.OpType().decode()}"
        ops[key] = ops.get(key, 0) + 1
    inputs = {graph.Inputs(i).decode() for i in range(graph.InputsLength())}
    shapes = {}
    for j in range(graph.NodeArgsLength()):
        arg = graph.NodeArgs(j)
        name = arg.Name().decode()
        if name in inputs and arg.Type() is not None and arg.Type().Value() is not None:
            tensor = fbs.TensorTypeAndShape.TensorTypeAndShape()
            tensor.Init(arg.Type().Value().Bytes, arg.Type().Value().Pos)
            shape = tensor.Shape()
            dims = [shape.Dim(k).Value() for k in range(shape.DimLength())] if shape is not None else []
            shapes[name] = [
                d.DimValue() if d.DimType() == fbs.DimensionValueType.DimensionValueType.VALUE else d.DimParam().decode() for d in dims
            ]
    return {"nodes": graph.NodesLength(), "ops": dict(sorted(ops.items())), "inputs": shapes}
