"""speed/device_runner.py: standalone (no dereflect import), same metrics and the same rows
as the main runner on the same artifact and pairs."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_bench import bench_env  # noqa: F401  (the export both files use, built once per session)

from dereflect import metrics

RUNNER = Path(__file__).resolve().parents[1] / "speed" / "device_runner.py"


@pytest.fixture(scope="module")
def device_runner():
    spec = importlib.util.spec_from_file_location("device_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_runner"] = module
    spec.loader.exec_module(module)
    return module


def test_device_runner_imports_only_what_a_phone_has():
    allowed = {
        "argparse",
        "hashlib",
        "json",
        "math",
        "os",
        "platform",
        "resource",
        "statistics",
        "sys",
        "time",
        "datetime",
        "pathlib",
        "__future__",
        "numpy",
        "PIL",
        "onnxruntime",
        "openvino",
    }
    imported = set()
    for node in ast.walk(ast.parse(RUNNER.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= allowed, imported - allowed


@pytest.mark.parametrize("shape", [(64, 64), (53, 97), (120, 81)])
def test_device_runner_metrics_equal_dereflect(device_runner, photo, shape):
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    gt = np.ascontiguousarray(photo[100 : 100 + h, 150 : 150 + w])
    est = np.clip(gt.astype(np.int16) + rng.integers(-25, 26, gt.shape), 0, 255).astype(np.uint8)
    mine, ref = device_runner.score(gt, est), metrics.score(gt, est)
    for k in ("psnr", "ssim", "lmse", "ncc"):
        assert mine[k] == pytest.approx(ref[k], abs=1e-6), k


def test_device_runner_rows_match_main_runner(device_runner, bench_env, tmp_path):  # noqa: F811 - the imported fixture
    from typer.testing import CliRunner

    from dereflect.bench.ledger import ROW_KEYS, load_ledger
    from dereflect.bench.machine import device_name
    from dereflect.cli import app

    art, pairs = bench_env
    artifact = art / "student-nano-int8.onnx"
    dev_json, main_json = tmp_path / "device.json", tmp_path / "main.json"
    timing = ["--pairs", str(pairs), *"--sizes 64 --runs 2 --warmup 1".split()]  # the same for both runners
    device_runner.main([str(artifact), *timing, "--backend", "onnxruntime", "--json", str(dev_json)])
    [row] = load_ledger(dev_json)
    assert set(ROW_KEYS) <= set(row) and row["status"] == "ok" and row["device"] == device_name()
    assert row["source"] == "speed/device_runner.py" and "numpy" in row["metric_impl"]
    assert row["latency_ms"] > 0 and row["model_latency_ms"] > 0 and row["runs"] == 2
    res = CliRunner().invoke(
        app, ["bench", str(art), *timing, "--backends", "onnxruntime", "--json", str(main_json), "--browser-ledger", "/nonexistent.json"]
    )
    assert res.exit_code == 0, res.output
    main = next(r for r in json.loads(main_json.read_text())["rows"] if r.get("artifact") == artifact.name)
    for k in ("psnr", "ssim", "lmse", "ncc", "identity_ssim", "identity_lmse"):
        assert row[k] == pytest.approx(main[k], abs=1e-5), k
    for k in ("device", "backend", "format", "precision", "size", "artifact", "artifact_sha256", "size_bytes"):
        assert row[k] == main[k], k


def test_device_runner_refuses_a_changed_artifact(device_runner, bench_env, tmp_path):  # noqa: F811 - the imported fixture
    import shutil

    art, _ = bench_env
    copy = tmp_path / "student-nano-fp32.onnx"
    shutil.copyfile(art / copy.name, copy)
    shutil.copyfile(art / (copy.name + ".json"), tmp_path / (copy.name + ".json"))
    with open(copy, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(SystemExit, match="sha256 differs from its manifest"):
        device_runner.main([str(copy), "--sizes", "64"])
