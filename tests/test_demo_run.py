"""`dereflect demo run`: the main job works from a fresh clone (no ../shared) and writes what it says:
scores, clean photos, and (steps 4-5) exported artifacts benchmarked into a ledger and a report."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dereflect.cli import app
from dereflect.images import read_rgb
from dereflect.metrics import ssim


def test_demo_run_writes_scores_and_clean_photos(tmp_path):
    # One format and two precisions keep the test short; `make demo` exports every format at all three.
    res = CliRunner().invoke(
        app,
        [
            "demo",
            "run",
            "--out",
            str(tmp_path),
            "--sequences",
            "2",
            "--size",
            "64",
            "--bench-sizes",
            "64",
            "--formats",
            "onnx",
            "--precisions",
            "fp32,int8",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "preview.png").is_file()
    identity = json.loads((tmp_path / "scores-identity.json").read_text())
    student = json.loads((tmp_path / "scores-default.json").read_text())
    assert len(identity["rows"]) == len(student["rows"]) == 2
    clean = sorted((tmp_path / "removed").glob("*_clean.png"))
    photos = sorted((tmp_path / "removed").glob("*_photo.png"))
    assert len(clean) == len(photos) == 2
    # The student changes the photo, but stays close to it (it removes a layer, not the scene).
    a, b = read_rgb(photos[0]), read_rgb(clean[0])
    assert a.shape == b.shape and (a != b).any() and ssim(a, b) > 0.8
    assert "results in" in res.output
    # The export + benchmark steps: every artifact scored on the synthesised pairs and timed at 64 px.
    assert sorted(p.name for p in (tmp_path / "artifacts").glob("*.onnx")) == ["student-nano-fp32.onnx", "student-nano-int8.onnx"]
    rows = [r for r in json.loads((tmp_path / "bench.json").read_text())["rows"] if r.get("source") == "dereflect bench"]
    assert {(r["format"], r["precision"], r["status"]) for r in rows} >= {
        ("pytorch", "fp32", "reference"),
        ("onnx", "fp32", "passed"),
        ("onnx", "int8", "passed"),
    }
    assert all(r["pair_count"] == 2 and r["size"] == 64 for r in rows)
    assert f"report: {(tmp_path / 'bench.html').resolve()}" in res.output.replace("\n", "")
    assert "<svg" in (tmp_path / "bench.html").read_text()
