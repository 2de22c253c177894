"""ONNX Runtime's own mobile usability checker on the fixed-shape artifacts: one partition with 100 %
of the nodes for NNAPI and Core ML (MLProgram) at fp32 and fp16, and what it says for INT8 QDQ.

The checker runs for real: once as the command line a user would type
(`python -m onnxruntime.tools.check_onnx_model_mobile_usability`, its log parsed), and in-process
by the export, which records the result in each fixed-shape manifest. The `.ort` files cannot be
given to the checker (it reads ONNX); they are built from the checked ONNX with the Runtime
optimisation style, and the test reads their flatbuffer graph to see it is that same graph.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dereflect.export import mobile_check
from dereflect.export.formats import FORMATS_BY_NAME
from dereflect.export.pipeline import Exporter, ExportOptions

PHONE_EPS = ("NNAPI", "CoreML MLProgram")
SHAPE = (256, 256)


@pytest.fixture(scope="module")
def built(tmp_path_factory, ckpt, student) -> dict[str, Path]:
    """fp32, fp16 and int8 of onnx + ort at --fixed-shape 256x256 (one dynamo export, reused), and the dynamic fp32 ONNX."""
    out = tmp_path_factory.mktemp("mobile")
    formats = [FORMATS_BY_NAME["onnx"], FORMATS_BY_NAME["ort"]]
    base = None
    for precision in ("fp32", "fp16", "int8"):
        opts = ExportOptions(precision=precision, size=64, val_count=2, calib_count=4, fixed_shapes=(SHAPE,))
        exporter = Exporter(ckpt, out, opts, log=lambda _: None, model=student, base_onnx=base)
        if base is None:
            base = exporter.onnx_path("fp32")  # dynamic (no shape being built yet)
            dynamic = Path(out / "dynamic-fp32.onnx")
            dynamic.write_bytes(base.read_bytes())
            base = dynamic
        results = exporter.run(formats)
        assert all(r.status == "passed" for r in results), [(r.artifact, r.status, r.message) for r in results]
    return {"out": out, "dynamic": dynamic}


def _cli_report(model: Path) -> dict[str, dict]:
    """The checker as a user runs it; its log (stderr, Python logging) parsed."""
    proc = subprocess.run(
        [sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(model)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=model.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return mobile_check.parse_log(proc.stdout + proc.stderr)


def _supported_ops(ep: str) -> set[str]:
    """`domain:op` rows of the checker's own supported-op table for `ep` (the markdown files it reads)."""
    from onnxruntime.tools import mobile_helpers

    name = {"NNAPI": "nnapi_supported_ops.md", "CoreML MLProgram": "coreml_supported_mlprogram_ops.md"}[ep]
    rows = (Path(mobile_helpers.__file__).parent / name).read_text().splitlines()
    return {r.split("|")[1] for r in rows if r.startswith("|") and r.count("|") == 3 and ":" in r.split("|")[1]}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_checker_cli_reports_one_partition_with_every_node(built, precision):
    model = built["out"] / f"student-nano-256x256-{precision}.onnx"
    report = _cli_report(model)
    for ep in PHONE_EPS:
        r = report[ep]
        assert (r["partitions"], r["supported_nodes"], r["percent"], r["verdict"]) == (1, r["nodes"], 100.0, "YES"), (ep, r)
        assert r["unsupported_by_dynamic_shape"] == 0 and r["unsupported_ops"] == []
    # the export ran the same checker in-process and recorded the same numbers
    recorded = json.loads((built["out"] / f"{model.name}.json").read_text())["mobile_usability"]
    assert {ep: recorded["eps"][ep] for ep in PHONE_EPS} == {ep: report[ep] for ep in PHONE_EPS}
    assert set(PHONE_EPS) <= set(recorded["one_partition_all_nodes"])


def test_dynamic_export_runs_nothing_on_the_phone_eps(built):
    """The 'before': with dynamic H/W the checker gives the phone EPs none of the nodes, all for the dynamic shape."""
    report = mobile_check.check(built["dynamic"])["eps"]
    for ep in PHONE_EPS:
        r = report[ep]
        assert r["partitions"] == 0 and r["supported_nodes"] == 0 and r["unsupported_by_dynamic_shape"] == r["nodes"] > 0


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ort_holds_the_checked_graph(built, precision):
    out = built["out"]
    manifest = json.loads((out / f"student-nano-256x256-{precision}.ort.json").read_text())
    usability = manifest["mobile_usability"]
    graph = mobile_check.ort_graph(out / f"student-nano-256x256-{precision}.ort")
    assert graph == usability["ort_graph"]
    assert graph["inputs"] == {"input": [1, 3, *SHAPE]}
    assert graph["nodes"] == usability["eps"]["NNAPI"]["nodes"]  # the basic-optimised graph the checker counted
    for ep in PHONE_EPS:
        assert set(graph["ops"]) <= _supported_ops(ep), (ep, set(graph["ops"]) - _supported_ops(ep))
        assert usability["eps"][ep]["partitions"] == 1 and usability["eps"][ep]["percent"] == 100.0


def test_int8_qdq_runs_whole_on_nnapi_but_not_on_coreml(built):
    """What the checker says for INT8 QDQ (recorded in the README): NNAPI takes the whole graph;
    the Core ML EP has no QuantizeLinear/DequantizeLinear, so the graph splits into many small
    partitions (ship fp16, or Core ML's own int8 weights, to iOS)."""
    recorded = json.loads((built["out"] / "student-nano-256x256-int8.onnx.json").read_text())["mobile_usability"]["eps"]
    nnapi, coreml = recorded["NNAPI"], recorded["CoreML MLProgram"]
    assert (nnapi["partitions"], nnapi["percent"]) == (1, 100.0)
    assert coreml["partitions"] > 2 and coreml["percent"] < 50
    assert set(coreml["unsupported_ops"]) == {"ai.onnx:DequantizeLinear", "ai.onnx:QuantizeLinear"}
    print(f"int8 QDQ: {mobile_check.summary({'eps': recorded})}")


def test_parse_log_ignores_the_fixed_shape_estimate():
    """The tool also prints what fixed shapes *would* give; only the 'as is' numbers count."""
    log = "\n".join(
        [
            "INFO:  Checking NNAPI",
            "INFO:  0 partitions with a total of 0/56 nodes can be handled by the NNAPI EP.",
            "INFO:  Unsupported nodes due to operator=0",
            "INFO:  Unsupported nodes due to input having a dynamic shape=56",
            "INFO:  Model should perform well with NNAPI as is: NO",
            "INFO:  --------",
            "INFO:  1 partitions with a total of 56/56 nodes can be handled by the NNAPI EP.",
            "INFO:  Model should perform well with NNAPI if modified to have fixed input shapes: YES",
        ]
    )
    r = mobile_check.parse_log(log)["NNAPI"]
    assert (r["partitions"], r["supported_nodes"], r["nodes"], r["verdict"], r["unsupported_by_dynamic_shape"]) == (0, 0, 56, "NO", 56)
    assert mobile_check.parse_log("INFO:  Checking NNAPI\n") == {}  # cut short: not reported
