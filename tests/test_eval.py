"""`dereflect eval` and evaluate(): pairing, scores equal to the metrics, JSON, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dereflect import metrics
from dereflect.cli import app, main
from dereflect.errors import DereflectError
from dereflect.evaluate import EvalResult, UnpairedWarning, evaluate, find_pairs
from dereflect.images import read_rgb, write_image


def _through_glass(transmission: np.ndarray, reflection: np.ndarray, weight: float) -> np.ndarray:
    """A synthetic photo through glass: transmission plus a dimmed, blurred reflection."""
    r = reflection.astype(np.float64)
    r = (r + np.roll(r, 2, 0) + np.roll(r, 2, 1) + np.roll(r, -2, 0)) / 4
    return np.clip(transmission * (1 - weight / 2) + weight * r, 0, 255).astype(np.uint8)


@pytest.fixture
def paired_set(tmp_path: Path, photo: np.ndarray) -> Path:
    root = tmp_path / "pairs"
    crops = {"a": (slice(0, 96), slice(0, 128)), "b": (slice(200, 296), slice(100, 228)), "c": (slice(400, 480), slice(300, 400))}
    for i, (name, crop) in enumerate(crops.items()):
        t = photo[crop]
        write_image(root / "transmission" / f"{name}.png", t)
        write_image(root / "blended" / f"{name}.png", _through_glass(t, t[::-1, ::-1], 0.2 + 0.1 * i))
    write_image(root / "blended" / "lonely.png", photo[:32, :32])  # no transmission: skipped
    return root


def test_identity_scores_equal_the_metrics(paired_set: Path) -> None:
    with pytest.warns(UnpairedWarning, match=r"lonely\.png: no matching transmission"):
        result = evaluate(lambda rgb: rgb, paired_set, progress=False)
    assert [r["name"] for r in result.rows] == ["a", "b", "c"]
    assert result.failures == []
    for row in result.rows:
        gt = read_rgb(paired_set / "transmission" / f"{row['name']}.png")
        est = read_rgb(paired_set / "blended" / f"{row['name']}.png")
        assert row == {"name": row["name"], **metrics.score(gt, est), "gt_shift": metrics.gt_shift(gt, est)}
    for k in ("psnr", "ssim", "lmse", "ncc"):
        assert result.mean[k] == pytest.approx(np.mean([r[k] for r in result.rows]), rel=1e-12)
    # A perfect model: SSIM 1, LMSE 0 on every pair.
    perfect = {read_rgb(paired_set / "blended" / f"{n}.png").tobytes(): read_rgb(paired_set / "transmission" / f"{n}.png") for n in "abc"}
    with pytest.warns(UnpairedWarning):
        best = evaluate(lambda rgb: perfect[rgb.tobytes()], paired_set, progress=False)
    assert best.mean["ssim"] == pytest.approx(1.0) and best.mean["lmse"] == 0.0
    assert best.mean["ssim"] > result.mean["ssim"]


def test_transmission_layer_folder_and_other_suffixes(tmp_path: Path, photo: np.ndarray) -> None:
    write_image(tmp_path / "blended" / "x.JPG", photo[:64, :64])
    write_image(tmp_path / "transmission_layer" / "x.png", photo[:64, :64])
    pairs = find_pairs(tmp_path)
    assert [(p.name, p.blended.name, p.transmission.name) for p in pairs] == [("x", "x.JPG", "x.png")]


def test_sequence_set_scores_the_middle_frame(tmp_path: Path, photo: np.ndarray) -> None:
    for seq, n_frames in (("seq_a", 5), ("seq_b", 3)):
        for i in range(n_frames):
            t = np.ascontiguousarray(photo[i * 8 : i * 8 + 64, 0:64])
            write_image(tmp_path / seq / f"frame_{i:03d}.png", _through_glass(t, t[::-1], 0.3))
            write_image(tmp_path / seq / "transmission" / f"frame_{i:03d}.png", t)
    (tmp_path / "seq_c").mkdir()  # no frames at all: ignored
    pairs = find_pairs(tmp_path)
    assert [(p.name, p.blended.name) for p in pairs] == [("seq_a", "frame_002.png"), ("seq_b", "frame_001.png")]
    assert pairs[0].transmission == tmp_path / "seq_a" / "transmission" / "frame_002.png"
    result = evaluate(lambda rgb: rgb, tmp_path, progress=False)
    gt = read_rgb(tmp_path / "seq_a" / "transmission" / "frame_002.png")
    assert result.rows[0]["ssim"] == metrics.ssim(gt, read_rgb(tmp_path / "seq_a" / "frame_002.png"))


def test_cli_table_and_json(paired_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "report" / "scores.json"
    result = CliRunner().invoke(app, ["eval", "identity", "--pairs", str(paired_set), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "mean (3)" in result.output and "PSNR" in result.output
    assert "warning:" in result.output and "lonely.png" in result.output
    data = json.loads(out.read_text())
    assert set(data) == {"model", "pairs", "rows", "mean", "aligned_mean", "failures"}
    assert data["model"] == "identity" and data["pairs"] == str(paired_set) and data["failures"] == []
    assert [r["name"] for r in data["rows"]] == ["a", "b", "c"]
    assert set(data["rows"][0]) == {"name", "psnr", "ssim", "lmse", "ncc", "gt_shift"}
    assert all(r["gt_shift"] <= metrics.ALIGNED_MAX_SHIFT for r in data["rows"])  # made from the same crop
    assert data["aligned_mean"] == {**data["mean"], "pairs": 3, "max_gt_shift": metrics.ALIGNED_MAX_SHIFT}
    assert "aligned GT" not in result.output  # only shown when some pair is misaligned
    skipped: list[str] = []
    direct = evaluate(lambda rgb: rgb, paired_set, progress=False, on_skip=skipped.append)
    assert len(skipped) == 1 and "lonely.png" in skipped[0]
    assert data["mean"] == pytest.approx(direct.mean, rel=1e-12)
    assert [p.name for p in out.parent.iterdir()] == ["scores.json"]  # atomic: no temp left


def test_misaligned_pairs_are_left_out_of_the_aligned_mean(paired_set: Path, photo: np.ndarray) -> None:
    write_image(paired_set / "transmission" / "b.png", photo[206:302, 100:228])  # ground truth 6 px off
    with pytest.warns(UnpairedWarning):
        result = evaluate(lambda rgb: rgb, paired_set, progress=False)
    shifts = {r["name"]: r["gt_shift"] for r in result.rows}
    assert shifts["a"] <= 1 and shifts["c"] <= 1 and shifts["b"] == pytest.approx(6.0, abs=0.3)
    rows = {r["name"]: r for r in result.rows}
    assert result.aligned_mean["ssim"] == pytest.approx((rows["a"]["ssim"] + rows["c"]["ssim"]) / 2, abs=1e-12)
    out = CliRunner().invoke(app, ["eval", "identity", "--pairs", str(paired_set)])
    assert out.exit_code == 0 and "mean, aligned GT (2)" in out.output


def test_corrupt_image_is_reported_and_the_rest_scored(paired_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = paired_set / "blended" / "b.png"
    broken.write_bytes(broken.read_bytes()[:200])
    out = tmp_path / "s.json"
    with pytest.raises(SystemExit) as info:
        main(["eval", "identity", "--pairs", str(paired_set), "--json", str(out)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"error: {broken}: corrupt or truncated image" in err
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["rows"]] == ["a", "c"]
    assert data["failures"][0]["path"] == str(broken)


def test_missing_dir_and_no_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv, expected in (
        (["eval", "identity", "--pairs", str(tmp_path / "nope")], f"error: {tmp_path / 'nope'}: no such folder"),
        (["eval", "identity", "--pairs", str(tmp_path)], f"error: {tmp_path}: no pairs found"),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 1
        assert capsys.readouterr().err.startswith(expected)
    (tmp_path / "blended").mkdir()
    with pytest.raises(DereflectError, match="no transmission/"):
        find_pairs(tmp_path)


def test_eval_a_checkpoint_scores_what_the_runtime_outputs(paired_set: Path, tmp_path: Path) -> None:
    from dereflect.images import read_rgb
    from dereflect.metrics import ssim
    from dereflect.runtime import load

    weights = Path(__file__).parents[1] / "dereflect" / "weights" / "student-nano.safetensors"
    out = tmp_path / "scores.json"
    with pytest.raises(SystemExit) as info:
        main(["eval", str(weights), "--pairs", str(paired_set), "--json", str(out)])
    assert info.value.code in (0, None)
    rows = json.loads(out.read_text())["rows"]
    assert rows
    session = load(str(weights))
    with pytest.warns(UnpairedWarning):
        pairs = find_pairs(paired_set)
    for row, pair in zip(rows, pairs):
        expected = ssim(read_rgb(pair.transmission), session.run(read_rgb(pair.blended)))
        assert row["ssim"] == pytest.approx(expected, abs=1e-12)


def test_wrong_model_output_is_a_failure_not_a_crash(paired_set: Path) -> None:
    with pytest.warns(UnpairedWarning):
        result = evaluate(lambda rgb: rgb[:-1], paired_set, progress=False)
    assert result.rows == [] and len(result.failures) == 3
    assert "model returned uint8" in result.failures[0].problem
    assert all(math.isnan(v) for v in result.mean.values())
    assert EvalResult().to_json("m", Path("p"))["mean"] == {k: None for k in ("psnr", "ssim", "lmse", "ncc")}


def test_real_set_identity_baseline(shared_data: Path) -> None:
    folder = shared_data / "real_pairs_locationaware"
    if not folder.is_dir():
        pytest.skip("real_pairs_locationaware not present")
    with pytest.warns(UnpairedWarning):
        result = evaluate(lambda rgb: rgb, folder, progress=False)
    assert len(result.rows) == 8 and not result.failures
    # The input itself as the answer: what any model has to beat on this set.
    assert 10 < result.mean["psnr"] < 25 and 0.3 < result.mean["ssim"] < 0.9
