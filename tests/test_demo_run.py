"""`dereflect demo run`: the main job works from a fresh clone (no ../shared) and writes what it says."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dereflect.cli import app
from dereflect.io import read_rgb
from dereflect.metrics import ssim


def test_demo_run_writes_scores_and_clean_photos(tmp_path):
    res = CliRunner().invoke(app, ["demo", "run", "--out", str(tmp_path), "--sequences", "2", "--size", "64"])
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
