"""`dereflect remove` through the real entry point, on a perturbed student-nano checkpoint (and
its ONNX export for one run): outputs, metadata kept, inputs never overwritten, bad files
reported by name while the others are written, exit statuses."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image, ImageCms

from dereflect.export.formats import FORMATS_BY_NAME
from dereflect.export.pipeline import Exporter, ExportOptions
from dereflect.images import read_image, write_image
from dereflect.models import save_checkpoint
from dereflect.models.reference import reference_student
from dereflect.runtime import load


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(reference_student("student-nano", seed=1), tmp_path_factory.mktemp("ckpt") / "nano.safetensors")


@pytest.fixture
def photos(tmp_path, photo) -> Path:
    """A folder with a PNG and a JPEG (small crops of a real photo)."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo[:48, :64]).save(folder / "a.png")
    Image.fromarray(photo[200:256, 100:140]).save(folder / "b.jpg", quality=95)
    return folder


def test_folder_outputs_and_reflection(ckpt, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["remove", str(photos), "-o", str(out), "--model", str(ckpt), "--save-reflection"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_reflection.png", "b.jpg", "b_reflection.png"]
    assert "backend: torch" in stdout and "s on torch" in stdout and "2 image(s) written" in stdout
    src = np.asarray(Image.open(photos / "a.png"))
    clean = np.asarray(Image.open(out / "a.png"))
    assert clean.shape == src.shape and np.array_equal(clean, load(ckpt).run(src))
    removed = np.asarray(Image.open(out / "a_reflection.png"))
    assert np.array_equal(removed, np.clip(src.astype(int) - clean.astype(int), 0, None).astype(np.uint8))
    assert removed.max() > 0
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "a.png").stat().st_mode & 0o777 == 0o666 & ~mask  # not the temporary file's private 0600


def test_glob_and_suffix(ckpt, photos, tmp_path, capsys):
    code, _, err = run_cli(["remove", str(photos / "*.png"), "-o", str(photos), "--suffix", "_clean", "--model", str(ckpt)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in photos.iterdir()) == ["a.png", "a_clean.png", "b.jpg"]


def test_folder_with_a_corrupt_file(ckpt, photos, tmp_path, capsys):
    (photos / "c.png").write_bytes((photos / "a.png").read_bytes()[:200])  # truncated PNG
    out = tmp_path / "out"
    code, stdout, err = run_cli(["remove", str(photos), "-o", str(out), "--model", str(ckpt)], capsys)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg"]
    assert f"error: {photos / 'c.png'}: " in err
    assert "2 image(s) written" in stdout and "1 failed" in stdout


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("corrupt", "corrupt"),
        ("not an image", "not an image"),
        ("no match", "no image files match"),
    ],
)
def test_bad_inputs_are_named(ckpt, photos, tmp_path, capsys, case, message):
    bad = {
        "missing": tmp_path / "gone.jpg",
        "corrupt": tmp_path / "broken.jpg",
        "not an image": tmp_path / "notes.png",
        "no match": tmp_path / "*.webp",
    }[case]
    if case == "corrupt":
        bad.write_bytes((photos / "b.jpg").read_bytes()[:400])
    elif case == "not an image":
        bad.write_text("shopping list\n")
    out = tmp_path / "out"
    code, _, err = run_cli(["remove", str(bad), str(photos / "a.png"), "-o", str(out), "--model", str(ckpt)], capsys)
    assert code == 1
    assert f"error: {bad}: " in err and message in err
    assert (out / "a.png").is_file()  # the good one is still written


def test_inputs_are_never_overwritten(ckpt, photos, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    code, _, err = run_cli(["remove", str(photos / "a.png"), "-o", str(photos / "a.png"), "--model", str(ckpt)], capsys)
    assert code == 1 and "-o points at an input file" in err
    code, _, err = run_cli(["remove", str(photos), "-o", str(photos), "--model", str(ckpt)], capsys)
    assert code == 1 and "would overwrite an input" in err and str(photos / "a.png") in err
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_unwritable_output(ckpt, photos, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = run_cli(["remove", str(photos / "a.png"), "-o", str(blocker / "sub"), "--model", str(ckpt)], capsys)
    assert code == 1 and f"error: {blocker / 'sub'}: cannot create the output folder" in err


def test_unknown_backend_is_usage_error(ckpt, photos, tmp_path, capsys):
    code, _, err = run_cli(["remove", str(photos), "-o", str(tmp_path / "o"), "--model", str(ckpt), "--backend", "quantum"], capsys)
    assert code == 2 and "unknown backend 'quantum'" in err


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_off_macos(photos, tmp_path, capsys):
    package = tmp_path / "student-nano-fp32.mlpackage"
    package.mkdir()
    code, _, err = run_cli(["remove", str(photos), "-o", str(tmp_path / "o"), "--model", str(package), "--backend", "coreml"], capsys)
    assert code == 1 and "Core ML runs only on macOS" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def _srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_metadata_alpha_and_16_bit_are_kept(ckpt, photo, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    icc = _srgb()
    # 16-bit RGBA PNG with an ICC profile
    rgb16 = photo[:40, :56].astype(np.uint16) * 257 + np.arange(56, dtype=np.uint16)[None, :, None]
    alpha16 = np.tile(np.linspace(0, 65535, 56).astype(np.uint16), (40, 1))
    write_image(src / "deep.png", rgb16, alpha=alpha16, icc_profile=icc)
    # JPEG with EXIF (camera make, orientation 1) and ICC
    exif = Image.Exif()
    exif[0x010F] = "dereflect-test-camera"
    buf = io.BytesIO()
    Image.fromarray(photo[:40, :56]).save(buf, "JPEG", exif=exif.tobytes(), icc_profile=icc, quality=95)
    (src / "shot.jpg").write_bytes(buf.getvalue())
    # 16-bit TIFF
    write_image(src / "scan.tif", rgb16)
    out = tmp_path / "out"
    code, _, err = run_cli(["remove", str(src), "-o", str(out), "--model", str(ckpt)], capsys)
    assert code == 0, err

    deep = read_image(out / "deep.png")
    assert deep.bit_depth == 16 and deep.pixels.dtype == np.uint16 and deep.icc_profile == icc
    assert np.array_equal(deep.alpha, alpha16)
    assert np.array_equal(deep.pixels, load(ckpt).run(rgb16))
    assert len(np.unique(deep.pixels % 257)) > 10  # 16-bit results, not 8-bit ones scaled up
    shot = read_image(out / "shot.jpg")
    assert shot.icc_profile == icc and Image.open(out / "shot.jpg").getexif()[0x010F] == "dereflect-test-camera"
    scan = read_image(out / "scan.tif")
    assert scan.bit_depth == 16 and scan.pixels.shape == rgb16.shape


def test_exported_artifact_folder(tmp_path, photos, capsys):
    """The same command on an export folder: auto picks the fastest backend and says which."""
    student = reference_student("student-nano", seed=1)
    ck = save_checkpoint(student, tmp_path / "ck" / "nano.safetensors")
    art = tmp_path / "art"
    Exporter(ck, art, ExportOptions(precision="fp32", size=32, val_count=2), log=lambda _: None, model=student).run(
        [FORMATS_BY_NAME["onnx"]]
    )
    code, stdout, err = run_cli(["remove", str(photos), "-o", str(tmp_path / "o"), "--model", str(art)], capsys)
    assert code == 0, err
    assert "backend: onnxruntime" in stdout and "student-nano-fp32.onnx" in stdout
    got = np.asarray(Image.open(tmp_path / "o" / "a.png")).astype(int)
    want = load(ck).run(np.asarray(Image.open(photos / "a.png"))).astype(int)
    assert np.abs(got - want).max() <= 1
