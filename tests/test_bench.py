"""`dereflect bench`: rows, verdicts, the CI gate, ledgers and the report, on a tiny real export.

The artifacts are the shipped student exported at test time (ONNX + OpenVINO, fp32 + int8);
sizes are 64 px and runs few: these tests check structure and verdicts, never times.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dereflect.bench.ledger import REQUIRED_KEYS, ROW_KEYS, load_ledger, merge_rows, speedups, summarize
from dereflect.bench.machine import device_name
from dereflect.cli import app
from dereflect.errors import DereflectError, UsageError
from dereflect.images import write_image

NO_BROWSER = ["--browser-ledger", "/nonexistent/browser-ledger.json"]


_ENV: dict[str, tuple[Path, Path]] = {}


@pytest.fixture(scope="session")
def bench_env(tmp_path_factory):
    """(artifact folder, pairs folder): the default student as onnx/openvino fp32+int8, 2 synthesised pairs,
    and a TensorRT 'artifact' (this machine has no TensorRT: its rows must say so, not fail).
    Built once per session even though test_bench_device_runner.py imports the fixture too."""
    if "env" not in _ENV:
        _ENV["env"] = _build_env(tmp_path_factory.mktemp("bench"))
    return _ENV["env"]


def _build_env(root: Path) -> tuple[Path, Path]:
    from dereflect.export.calib import synthesize_pairs
    from dereflect.export.manifest import build_manifest, io_spec, write_manifest
    from dereflect.export.pipeline import export_all
    from dereflect.runtime.resolve import default_checkpoint

    art = root / "art"
    export_all(default_checkpoint(), art, ("fp32", "int8"), "onnx,openvino", log=lambda _: None, size=64, val_count=2, calib_count=4)
    engine = art / "student-nano-fp16.engine"
    engine.write_bytes(b"not a real engine")
    write_manifest(
        engine,
        build_manifest(
            fmt="tensorrt",
            precision="fp16",
            runtime="tensorrt",
            artifact=engine,
            source={"checkpoint": str(default_checkpoint())},
            parity={"status": "not run", "reason": "test"},
            io=io_spec(),
        ),
    )
    pairs = root / "pairs"
    data = synthesize_pairs(2, 64, seed=5)
    for i in range(2):
        write_image(pairs / "blended" / f"p{i}.png", np.rint(data.images[i].transpose(1, 2, 0) * 255).astype(np.uint8))
        write_image(pairs / "transmission" / f"p{i}.png", np.rint(data.truth[i].transpose(1, 2, 0) * 255).astype(np.uint8))
    return art, pairs


def _bench(args: list[str]):
    return CliRunner().invoke(app, ["bench", *args, "--sizes", "64", "--runs", "2", "--warmup", "1", *NO_BROWSER])


def test_bench_rows_quality_and_report(bench_env, tmp_path):
    from dereflect.evaluate import evaluate, load_predict
    from dereflect.runtime import load

    art, pairs = bench_env
    out, html = tmp_path / "b.json", tmp_path / "b.html"
    res = _bench([str(art), "--pairs", str(pairs), "--json", str(out), "--report", str(html)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    got = {(r["format"], r["precision"], r["backend"], r["status"]) for r in rows}
    assert got == {
        ("pytorch", "fp32", "torch/cpu", "reference"),
        ("onnx", "fp32", "onnxruntime/cpu", "passed"),
        ("onnx", "fp32", "openvino/cpu", "passed"),
        ("openvino", "fp32", "openvino/cpu", "passed"),
        ("onnx", "int8", "onnxruntime/cpu", "passed"),
        ("onnx", "int8", "openvino/cpu", "passed"),
        ("openvino", "int8", "openvino/cpu", "passed"),
        ("tensorrt", "fp16", "tensorrt", "could not run"),
    }
    ref = next(r for r in rows if r["status"] == "reference")
    for r in rows:
        assert set(ROW_KEYS) <= set(r) and r["size"] == 64 and r["device"] == device_name()
        assert r["tools"]["onnxruntime"] and r["machine"]["cores"] >= 1
        if r["status"] == "could not run":
            assert "tensorrt" in r["reason"].lower() and r["latency_ms"] is None
            continue
        assert r["latency_ms"] > 0 and r["p90_ms"] >= r["latency_ms"] and r["model_latency_ms"] > 0
        assert r["runs"] == 2 and r["img_per_s"] == pytest.approx(1000 / r["latency_ms"], rel=1e-3)
        assert r["ref_ssim"] == ref["ssim"]
    # The quality numbers are what `dereflect eval` measures for the same artifact and for the identity.
    onnx_fp32 = next(r for r in rows if r["artifact"] == "student-nano-fp32.onnx" and r["backend"] == "onnxruntime/cpu")
    direct = evaluate(load(art / "student-nano-fp32.onnx").run, pairs, progress=False).mean
    identity = evaluate(load_predict("identity"), pairs, progress=False).mean
    for k in ("psnr", "ssim", "lmse", "ncc"):
        assert onnx_fp32[k] == pytest.approx(direct[k], abs=1e-6)
    assert onnx_fp32["identity_ssim"] == pytest.approx(identity["ssim"], abs=1e-6)
    assert onnx_fp32["max_abs_diff"] < 1e-4 and onnx_fp32["budget"] == {"max_abs_diff": 0.0001}
    int8 = next(r for r in rows if r["artifact"] == "student-nano-int8_openvino")
    assert int8["budget"] == {"max_ssim_drop": 0.01} and abs(int8["ssim_drop"]) < 0.01
    assert int8["speedup_vs_fp32"] > 0
    best = doc["summary"]["devices"][device_name()]["int8_vs_fp32_best"]
    assert best["precision"] == "int8" and best["speedup"] > 0
    assert re.search(r"INT8 vs fp32 on the best backend \(.+\) at 64 px: .* = [0-9.]+x", res.output)
    page = html.read_text()
    assert page.count("<svg") >= 1 and "data:image/jpeg;base64," in page and "latency vs SSIM" in page
    assert not re.search(r"(src|href)=\"https?:", page)  # self-contained: nothing fetched


def test_bench_gate_fails_with_reasons(bench_env, tmp_path):
    art, pairs = bench_env
    out = tmp_path / "b.json"
    res = _bench(
        [str(art), "--pairs", str(pairs), "--backends", "onnxruntime", "--max-diff", "0", "--min-ssim", "0.9999", "--json", str(out)]
    )
    assert res.exit_code == 1 and isinstance(res.exception, DereflectError)
    message = str(res.exception)
    assert "2 target(s) did not pass" in message and "max_abs_diff" in message and "< --min-ssim 0.9999" in message
    assert "failed: student-nano-fp32.onnx on onnxruntime" in res.output or "student-nano-fp32.onnx" in message
    rows = json.loads(out.read_text())["rows"]  # the ledger is written before the exit
    assert {r["status"] for r in rows if r["status"] != "reference"} == {"failed"}
    assert {r["backend"] for r in rows} == {"onnxruntime/cpu", "torch/cpu"}


def test_bench_errors(tmp_path, bench_env):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _bench([str(empty)])
    assert res.exit_code == 1 and "no exported artifacts" in str(res.exception)
    res = CliRunner().invoke(app, ["bench", str(bench_env[0]), "--sizes", "64,big"])
    assert isinstance(res.exception, UsageError) and res.exception.exit_code == 2 and "--sizes" in str(res.exception)
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": [{"device": "x"}]}')
    res = _bench([str(bench_env[0]), "--merge", str(bad)])
    assert res.exit_code == 1 and "bad.json" in str(res.exception) and "has no backend" in str(res.exception)


def test_ledgers_merge_and_speedups(tmp_path):
    browser = tmp_path / "browser.json"  # the demo's ledger_row output: a bare list
    from dereflect.bench.ledger import ledger_row

    browser.write_text(json.dumps([ledger_row([30.0, 32.0, 31.0], size=256, device="phone", threads=2)]))
    rows = load_ledger(browser)
    assert set(REQUIRED_KEYS) <= set(rows[0])
    mine = [
        {
            "device": "pc",
            "backend": "ov",
            "format": "openvino",
            "precision": p,
            "size": 256,
            "status": "passed",
            "latency_ms": ms,
            "artifact": f"a-{p}",
        }
        for p, ms in (("fp32", 20.0), ("int8", 8.0))
    ] + [
        {
            "device": "pc",
            "backend": "ort",
            "format": "onnx",
            "precision": p,
            "size": 256,
            "status": "passed",
            "latency_ms": ms,
            "artifact": f"b-{p}",
        }
        for p, ms in (("fp32", 30.0), ("int8", 10.0))
    ]
    newer = dict(mine[0], latency_ms=25.0)
    merged = merge_rows(rows, mine, [newer])
    assert len(merged) == 5 and next(r for r in merged if r.get("artifact") == "a-fp32")["latency_ms"] == 25.0
    ups = {(u["backend"]): u["speedup"] for u in speedups(merged)}
    assert ups == {"ov": pytest.approx(25 / 8, rel=1e-3), "ort": pytest.approx(3.0, rel=1e-3)}
    summary = summarize(merged)
    assert summary["devices"]["pc"]["int8_vs_fp32_best"]["backend"] == "ov"  # fastest INT8, not the biggest ratio
    assert summary["devices"]["pc"]["ship"]["256"]["artifact"] == "a-int8"
    assert summary["devices"]["phone"]["ship"]["256"]["backend"] == "onnxruntime-web/wasm"
    with pytest.raises(DereflectError, match="not a ledger"):
        (tmp_path / "x.json").write_text("{}")
        load_ledger(tmp_path / "x.json")


def test_reference_checkpoint_needs_matching_sha(tmp_path):
    from dereflect.bench.runner import reference_checkpoint
    from dereflect.export.manifest import sha256_file
    from dereflect.runtime.resolve import default_checkpoint

    ckpt = default_checkpoint()
    good = {"source": {"checkpoint": "dereflect/weights/student-nano.safetensors", "sha256": sha256_file(ckpt)}}
    assert reference_checkpoint(good, tmp_path) == Path(__file__).resolve().parents[1] / "dereflect/weights/student-nano.safetensors"
    assert reference_checkpoint({"source": {**good["source"], "sha256": "0" * 64}}, tmp_path) is None
    assert reference_checkpoint({"source": {}}, tmp_path) is None


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys):
    from dereflect.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(["bench", str(tmp_path / "no-artifacts-needed"), "--json", str(blocker / "b.json")])
    assert info.value.code == 1
    assert f"cannot write here: {blocker} is not a folder" in capsys.readouterr().err
