"""Photo pools, torch Datasets, the scene split and `dereflect data synth`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dereflect.cli import app, main
from dereflect.data.datasets import (
    PairedFolder,
    SequenceFolder,
    SyntheticSequences,
    draw_sequence,
    scene_of,
    scene_split,
)
from dereflect.data.photos import load_photos, split_photos
from dereflect.data.synth import read_sequence, synthesize_sequence, write_sequence
from dereflect.errors import DereflectError, UsageError

SHARED = Path(os.environ.get("DEREFLECT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
KEYS = ("frames", "input", "transmission", "reflection", "transmission_all", "reflection_all", "flow_T", "flow_R")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return load_photos(None, max_side=128)


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _noise_image(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- photos ---------------------------------------------------------------------------------


def test_bundled_photos_are_float_rgb_and_shrunk(photos):
    assert len(photos) >= 10
    for p in photos:
        assert p.dtype == np.float32 and p.ndim == 3 and p.shape[2] == 3
        assert max(p.shape[:2]) <= 128 and 0.0 <= p.min() and p.max() <= 1.0
    assert max(max(p.shape[:2]) for p in photos) == 128  # 512-px photos were shrunk, not cropped


def test_folder_photos_grey_and_rgba_become_rgb(tmp_path):
    Image.fromarray(np.full((30, 600), 100, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.full((20, 20, 4), 200, np.uint8)).save(tmp_path / "alpha.png")
    (tmp_path / "notes.txt").write_text("not an image")
    got = load_photos(tmp_path, max_side=300)
    assert [p.shape for p in got] == [(20, 20, 3), (15, 300, 3)]  # sorted: alpha.png, grey.png
    np.testing.assert_allclose(got[0], 200 / 255, atol=1e-6)


def test_bad_photo_folders_name_the_problem(tmp_path):
    with pytest.raises(DereflectError) as err:
        load_photos(tmp_path)
    assert str(tmp_path) in str(err.value) and "no images" in str(err.value)
    with pytest.raises(DereflectError, match="does not exist"):
        load_photos(tmp_path / "missing")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DereflectError) as err:
        load_photos(tmp_path)
    assert "broken.jpg" in str(err.value)


def test_split_photos_is_disjoint_and_deterministic(photos):
    train, val = split_photos(photos, 0.25, seed=1)
    assert len(train) + len(val) == len(photos) and len(val) == round(0.25 * len(photos))
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert not ids(train) & ids(val)
    assert ids(split_photos(photos, 0.25, seed=1)[1]) == ids(val)
    assert len(split_photos(photos[:2], 0.01, seed=0)[1]) == 1  # at least one each side


# ---- synthetic sequences --------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5])
def test_synthetic_items_shapes(photos, n):
    item = SyntheticSequences(photos, n_frames=n, size=40, length=4, seed=0)[1]
    assert set(item) == set(KEYS)
    assert item["frames"].shape == (n, 3, 40, 40) and item["flow_T"].shape == (n, 2, 40, 40)
    assert item["input"].shape == item["transmission"].shape == item["reflection"].shape == (3, 40, 40)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in item.values())
    torch.testing.assert_close(item["input"], item["frames"][n // 2])
    torch.testing.assert_close(item["transmission"], item["transmission_all"][n // 2])
    torch.testing.assert_close(item["input"], item["transmission"] + item["reflection"], atol=0.25, rtol=0)


def test_synthetic_items_are_deterministic_per_seed_and_index(photos):
    a = SyntheticSequences(photos, n_frames=3, size=32, length=5, seed=7)
    b = SyntheticSequences(photos, n_frames=3, size=32, length=5, seed=7)
    x, y = a[2], b[2]
    assert all(torch.equal(x[k], y[k]) for k in KEYS)
    assert not torch.equal(a[2]["frames"], a[3]["frames"])
    assert not torch.equal(x["frames"], SyntheticSequences(photos, n_frames=3, size=32, seed=8)[2]["frames"])
    a.set_epoch(1)
    assert not torch.equal(a[2]["frames"], x["frames"])
    with pytest.raises(IndexError):
        a[5]
    with pytest.raises(DereflectError, match="no photos"):
        SyntheticSequences([])


# ---- sequence folders -----------------------------------------------------------------------


def test_sequence_folder_reads_written_synthetic_sequences(photos, tmp_path):
    seq = synthesize_sequence(photos[0], photos[1], n_frames=3, size=32, rng=np.random.default_rng(0))
    write_sequence(seq, tmp_path / "seq_a")
    ds = SequenceFolder(tmp_path)
    assert ds.names == ["seq_a"] and set(ds[0]) == set(KEYS)
    np.testing.assert_allclose(ds[0]["flow_R"].numpy(), seq.flow_R.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(ds[0]["reflection"].numpy(), seq.reflection[1].transpose(2, 0, 1), atol=1e-4)
    half = SequenceFolder(tmp_path, size=16)[0]
    assert half["frames"].shape == (3, 3, 16, 16)
    # flows are pixel lengths: halving the image halves them
    expected = (
        torch.nn.functional.interpolate(
            torch.from_numpy(seq.flow_T.transpose(0, 3, 1, 2)), size=(16, 16), mode="bilinear", align_corners=False, antialias=True
        )
        * 0.5
    )
    torch.testing.assert_close(half["flow_T"], expected, atol=1e-4, rtol=0)


def test_sequence_folder_real_layouts(tmp_path):
    for k in range(3):  # Liu et al. 2020: NAME_I0.png ... flat
        _save(tmp_path / "flat" / f"00007_I{k}.png", _noise_image(k))
        _save(tmp_path / "nested" / "clip" / f"img{k + 8}.jpg", _noise_image(k))  # natural order: 8, 9, 10
    flat = SequenceFolder(tmp_path / "flat")
    assert flat.names == ["00007"] and set(flat[0]) == {"frames", "input"}
    np.testing.assert_allclose(flat[0]["input"].numpy(), _noise_image(1).transpose(2, 0, 1) / 255, atol=1e-6)
    nested = SequenceFolder(tmp_path / "nested")
    assert nested.names == ["clip"] and nested[0]["frames"].shape == (3, 3, 40, 48)
    with pytest.raises(DereflectError) as err:
        SequenceFolder(tmp_path / "nested" / "clip" / "img8.jpg")
    assert "img8.jpg" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DereflectError, match="no sequences found"):
        SequenceFolder(tmp_path / "empty")


@pytest.mark.skipif(not (SHARED / "real_multiframe_liu2020" / "frames_5").is_dir(), reason="shared data absent")
def test_sequence_folder_reads_liu2020_frames():
    ds = SequenceFolder(SHARED / "real_multiframe_liu2020" / "frames_5", size=64)
    assert ds.names == ["00000", "00001", "00002"]
    item = ds[0]
    assert item["frames"].shape == (5, 3, 64, 64) and set(item) == {"frames", "input"}


# ---- paired folders -------------------------------------------------------------------------


def _pairs(root: Path, names_b=("a", "b", "c"), names_t=("a", "b", "d"), t_dir="transmission") -> Path:
    for i, n in enumerate(names_b):
        _save(root / "blended" / f"{n}.png", _noise_image(i))
    for i, n in enumerate(names_t):
        _save(root / t_dir / f"{n}.jpg" if n == "b" else root / t_dir / f"{n}.png", _noise_image(i + 10))
    return root


def test_paired_folder_skips_unpaired_files_with_a_warning_naming_them(tmp_path):
    root = _pairs(tmp_path)
    with pytest.warns(UserWarning) as rec:
        ds = PairedFolder(root, size=None)
    message = str(rec[0].message)
    assert "blended/c.png" in message and "transmission/d.png" in message
    assert ds.names == ["a", "b"] and len(ds) == 2
    item = ds[0]
    assert set(item) == {"input", "transmission"} and item["input"].shape == (3, 40, 48)
    np.testing.assert_allclose(item["input"].numpy(), _noise_image(0).transpose(2, 0, 1) / 255, atol=1e-6)


def test_paired_folder_crops_and_augments_deterministically(tmp_path):
    root = _pairs(tmp_path, ("a", "b"), ("a", "b"), t_dir="transmission_layer")
    centre = PairedFolder(root, size=32)[0]
    np.testing.assert_allclose(centre["input"].numpy(), _noise_image(0)[4:36, 8:40].transpose(2, 0, 1) / 255, atol=1e-6)
    aug = PairedFolder(root, size=24, augment=True, seed=3)
    x, y = aug[1], PairedFolder(root, size=24, augment=True, seed=3)[1]
    assert x["input"].shape == (3, 24, 24) and torch.equal(x["input"], y["input"])
    assert any(not torch.equal(x["input"], PairedFolder(root, size=24, augment=True, seed=s)[1]["input"]) for s in range(4, 8))
    small = PairedFolder(root, size=64)[0]  # smaller than the crop: upscaled, never padded
    assert small["input"].shape == (3, 64, 64)
    assert PairedFolder(root, size=None, names=["b"]).names == ["b"]


def test_paired_folder_errors(tmp_path):
    with pytest.raises(DereflectError, match="blended/ and transmission/"):
        PairedFolder(tmp_path)
    root = _pairs(tmp_path / "p", ("a",), ("a",))
    _save(root / "transmission" / "a.png", _noise_image(0, 20, 20))
    with pytest.raises(DereflectError) as err:
        PairedFolder(root, size=None)[0]
    assert "a.png" in str(err.value) and "20x20 differs" in str(err.value)
    with pytest.raises(DereflectError, match="no pair named zz"):
        PairedFolder(root, names=["zz"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DereflectError, match="no image pairs"):
            PairedFolder(_pairs(tmp_path / "q", ("a",), ("b",)))


# ---- scene split ----------------------------------------------------------------------------


def test_scene_split_keeps_each_background_on_one_side():
    names = [f"{scene}-{k}" for scene in range(1, 21) for k in range(1, 1 + scene % 4 + 1)] + ["lonely"]
    train, val = scene_split(names, 0.2, seed=0)
    assert sorted(train + val) == sorted(names)
    assert not {scene_of(n) for n in train} & {scene_of(n) for n in val}
    assert len({scene_of(n) for n in val}) == round(0.2 * 21)
    assert scene_split(names, 0.2, seed=0) == (train, val)
    assert scene_split(names, 0.2, seed=1) != (train, val)
    assert scene_of("70-16.jpeg") == "70" and scene_of("107-8") == "107"


@pytest.mark.skipif(not (SHARED / "real_pairs_saggy361").is_dir(), reason="shared data absent")
def test_scene_split_on_saggy361():
    ds = PairedFolder(SHARED / "real_pairs_saggy361", size=None)
    train, val = scene_split(ds.names, 0.15, seed=0)
    assert len({scene_of(n) for n in ds.names}) == 107
    assert not {scene_of(n) for n in train} & {scene_of(n) for n in val}
    assert len({scene_of(n) for n in val}) == 16


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_synth_writes_sequences_and_preview(tmp_path):
    out = tmp_path / "synth"
    res = CliRunner().invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--sequences",
            "2",
            "--frames",
            "3",
            "--size",
            "32",
            "--seed",
            "5",
            "--preview",
            str(out / "preview.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "preview.png", "seq_00000", "seq_00001"]
    written = read_sequence(out / "seq_00001")
    expected = draw_sequence(load_photos(None), 1, seed=5, n_frames=3, size=32)
    np.testing.assert_allclose(written.frames, expected.frames, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(written.flow_T, expected.flow_T)
    assert Image.open(out / "preview.png").size == (5 * 36, 14 + 2 * 36)
    assert len(SequenceFolder(out)) == 2


def test_cli_synth_refuses_bad_input(tmp_path, capsys):
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "o"), "--frames", "4"])
    assert isinstance(res.exception, UsageError) and "odd" in str(res.exception)
    with pytest.raises(SystemExit) as stop:  # the console entry point: one line, exit status 2
        main(["data", "synth", "--out", str(tmp_path / "o"), "--frames", "4"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --frames must be odd and at least 3 (3 or 5), got 4"
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["data", "synth", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and isinstance(res.exception, DereflectError)
    assert str(tmp_path / "empty") in str(res.exception) and "no images" in str(res.exception)
    assert not (tmp_path / "o").exists()  # refused before any output
