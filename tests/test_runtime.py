"""The runtime on real backends: a perturbed student-nano (seeded; a fresh one is the identity),
its checkpoint, and its fp32 ONNX and OpenVINO exports made by the export stage.

Parity between backends on uint8 outputs, padding against the model's own pad_to_multiple,
tiled vs whole-image output, dtypes, model resolution (export folders, default weights) and
the refusals (sha256 mismatch, missing manifest, Core ML off macOS, TensorRT without CUDA).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dereflect.errors import DereflectError, UsageError
from dereflect.export.formats import FORMATS_BY_NAME, format_status
from dereflect.export.manifest import manifest_path
from dereflect.export.pipeline import Exporter, ExportOptions
from dereflect.models.blocks import pad_to_multiple
from dereflect.runtime import load, resolve, tiling

HAS_OPENVINO = format_status("openvino").can_run
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ckpt, student) -> Path:
    """fp32 ONNX (+ .ort) and, when installed, OpenVINO IR of the same weights, with manifests."""
    out = tmp_path_factory.mktemp("art")
    names = ["onnx"] + (["openvino"] if HAS_OPENVINO else [])
    results = Exporter(ckpt, out, ExportOptions(precision="fp32", size=32, val_count=2), log=lambda _: None, model=student).run(
        [FORMATS_BY_NAME[n] for n in names]
    )
    assert all(r.status == "passed" for r in results), [(r.format, r.status, r.message) for r in results]
    return out


@pytest.fixture(scope="module")
def image(photo) -> np.ndarray:
    return np.ascontiguousarray(photo[100:172, 180:276])  # 72 x 96


def test_backends_agree_on_uint8(ckpt, exported, image):
    """torch checkpoint vs its ONNX on ONNX Runtime vs OpenVINO (IR and the .onnx): <= 1 level apart."""
    runs = {"torch": load(ckpt), "onnxruntime": load(exported / "student-nano-fp32.onnx")}
    if HAS_OPENVINO:
        runs["openvino IR"] = load(exported / "student-nano-fp32_openvino")
        runs["openvino onnx"] = load(exported / "student-nano-fp32.onnx", backend="openvino")
    assert {k: s.backend for k, s in runs.items()} == {k: k.split()[0] for k in runs}
    outs = {k: s.run(image) for k, s in runs.items()}
    ref = outs["torch"].astype(int)
    assert np.abs(ref - image.astype(int)).mean() > 2.0  # the perturbed student really changes the photo
    for name, out in outs.items():
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.abs(out.astype(int) - ref).max() <= 1, name


@pytest.mark.parametrize("hw", [(37, 53), (8, 8), (3, 5), (64, 41)])
def test_odd_sizes_match_padded_reference(student, hw):
    """Any size: same shape out, equal to the model run on pad_to_multiple's padding, cropped."""
    rng = np.random.default_rng(hw[0] * 100 + hw[1])
    img = rng.random((*hw, 3), dtype=np.float32)
    out = load(student).run(img)
    x, (h, w) = pad_to_multiple(torch.from_numpy(img.transpose(2, 0, 1))[None], 8)
    with torch.no_grad():
        want = student(x)[0, :, :h, :w].numpy().transpose(1, 2, 0)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_dtypes_round_trip(ckpt, image):
    session = load(ckpt)
    out8 = session.run(image)
    out16 = session.run(image.astype(np.uint16) * 257)
    outf = session.run(image.astype(np.float32) / 255)
    out64 = session.run(image.astype(np.float64) / 255)
    assert out16.dtype == np.uint16 and outf.dtype == np.float32 and out64.dtype == np.float32
    assert np.abs(out16.astype(np.float64) / 257 - out8).max() <= 0.5 + 1e-6
    assert np.abs(outf * 255 - out8).max() <= 0.5 + 1e-4
    assert len(np.unique(out16 % 257)) > 10  # real 16-bit values, not 8-bit ones scaled up


def test_bad_arrays_are_refused(ckpt):
    session = load(ckpt)
    with pytest.raises(DereflectError, match="HxWx3"):
        session.run(np.zeros((16, 16), np.uint8))
    with pytest.raises(DereflectError, match="int32"):
        session.run(np.zeros((16, 16, 3), np.int32))
    with pytest.raises(DereflectError, match="NaN"):
        session.run(np.full((16, 16, 3), np.nan, np.float32))


def test_tiled_matches_untiled(student, photo):
    """Feathered tiles on an image that also runs whole: < 1e-3 mean abs, no visible seam."""
    img = photo[:384, 64:448].astype(np.float32) / 255
    whole = load(student).run(img)
    session = load(student, tile=256, overlap=128)
    plan = session.plan(*img.shape[:2])
    assert plan.tiled and plan.tile_h <= 256 and plan.tile_w <= 256
    calls = []
    tiled = session.run(img, on_tile=lambda: calls.append(1))
    assert len(calls) == plan.count
    diff = np.abs(tiled - whole)
    assert diff.mean() < 1e-3
    assert diff.max() < 2 / 255


def test_auto_tiling_above_the_budget(student, photo):
    session = load(student, max_pixels=200 * 200)
    img = photo[:300, :300]
    assert session.plan(200, 200).count == 1
    plan = session.plan(*img.shape[:2])
    assert plan.tiled and max(plan.tile_h, plan.tile_w) <= 200  # no tile over the budget either
    assert session.run(img).shape == img.shape


def test_plan_for_24_megapixels_keeps_memory_bounded():
    plan = tiling.plan_tiles(4000, 6000)
    assert max(plan.tile_h, plan.tile_w) <= tiling.DEFAULT_TILE and plan.count >= 24
    assert plan.count * plan.tile_h * plan.tile_w < 1.4 * 24e6  # overlap costs little: tiles spread evenly
    assert tiling.band_bytes(plan) < 120e6  # vs 384 MB for whole-image float accumulators


@pytest.mark.parametrize("tile, overlap", [(1024, 128), (256, 128), (96, 32), (64, 0)])
def test_tile_grids_cover_with_overlap(tile, overlap):
    rng = np.random.default_rng(tile + overlap)
    for h, w in [(1, 1), (37, 53), (1025, 1023), *rng.integers(1, 5000, size=(40, 2)).tolist()]:
        plan = tiling.plan_tiles(h, w, tile=tile, overlap=overlap)
        for origins, size, side in ((plan.ys, plan.tile_h, h), (plan.xs, plan.tile_w, w)):
            assert size <= max(tile, 8) and size % 8 == 0 and all(o % 8 == 0 for o in origins)
            assert origins[0] == 0 and origins[-1] + size >= side and origins[-1] + size - side < 8
            assert all(b - a <= size - plan.overlap for a, b in zip(origins, origins[1:]))  # overlap kept


def test_ramp_is_complementary():
    r = tiling.ramp(128)
    np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-6)
    assert r[:32].max() == 0.0 and r[-32:].min() == 1.0 and np.all(np.diff(r) >= 0)


def test_sha256_mismatch_is_refused(exported, tmp_path, image):
    src = exported / "student-nano-fp32.onnx"
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    manifest = json.loads(manifest_path(src).read_text())
    manifest["artifact_sha256"] = "0" * 64
    manifest_path(dst).write_text(json.dumps(manifest))
    with pytest.raises(DereflectError, match="sha256 mismatch"):
        load(dst)
    session = load(dst, verify=False)  # the explicit override
    assert session.backend == "onnxruntime" and session.run(image).shape == image.shape


def test_export_folder_refuses_a_changed_artifact(exported, tmp_path):
    folder = shutil.copytree(exported, tmp_path / "art")
    chosen = load(folder).model.path
    manifest = json.loads(manifest_path(chosen).read_text())
    manifest["artifact_sha256"] = "f" * 64
    manifest_path(chosen).write_text(json.dumps(manifest))
    with pytest.raises(DereflectError, match=f"{chosen.name}: sha256 mismatch"):
        load(folder)
    assert load(folder, verify=False).model.path == chosen


def test_artifact_without_manifest_needs_override(exported, tmp_path):
    dst = tmp_path / "bare.onnx"
    shutil.copyfile(exported / "student-nano-fp32.onnx", dst)
    with pytest.raises(DereflectError, match="no manifest"):
        load(dst)
    assert load(dst, verify=False).backend == "onnxruntime"


def test_export_folder_auto_picks_fastest_runnable(exported):
    session = load(exported)
    assert session.backend == ("openvino" if HAS_OPENVINO else "onnxruntime")
    assert "picked from" in session.describe() and session.backend in session.describe()
    assert load(exported, backend="onnxruntime").model.path.name == "student-nano-fp32.onnx"
    with pytest.raises(DereflectError, match="int8"):
        load(exported, precision="int8")


def test_default_weights_missing_is_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(resolve, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(DereflectError, match="default weights are not shipped in this checkout"):
        load("default")


def test_shipped_students_load_by_name(monkeypatch, tmp_path, ckpt):
    import shutil

    monkeypatch.setattr(resolve, "WEIGHTS_DIR", tmp_path)
    shutil.copy(ckpt, tmp_path / "student-test.safetensors")
    assert load("student-test", backend="torch").model.path == tmp_path / "student-test.safetensors"
    with pytest.raises(DereflectError, match="shipped students by name: default, student-test"):
        load("student-nope")


def test_backend_errors(ckpt, exported, tmp_path):
    with pytest.raises(UsageError, match="unknown backend 'fast'"):
        load(ckpt, backend="fast")
    with pytest.raises(UsageError, match="cannot run a checkpoint"):
        load(ckpt, backend="onnxruntime")
    with pytest.raises(UsageError, match="cannot run a onnx"):
        load(exported / "student-nano-fp32.onnx", backend="torch")
    with pytest.raises(DereflectError, match="no such model"):
        load(tmp_path / "nope.onnx")
    with pytest.raises(DereflectError, match="not a model"):
        load(Path(__file__))


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_off_macos_says_so(tmp_path):
    package = tmp_path / "student-nano-fp32.mlpackage"
    package.mkdir()
    with pytest.raises(DereflectError, match="Core ML runs only on macOS"):
        load(package)


@pytest.mark.skipif(format_status("tensorrt").can_run, reason="TensorRT is usable here")
def test_tensorrt_without_cuda_says_so(tmp_path):
    engine = tmp_path / "student-nano-fp32.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(DereflectError, match="TensorRT (is not usable here|needs a CUDA GPU)"):
        load(engine, backend="tensorrt")


def test_eval_uses_the_runtime(ckpt, image):
    from dereflect.evaluate import load_predict

    predict = load_predict(str(ckpt))
    out = predict(image)
    assert out.dtype == np.uint8 and np.array_equal(out, load(ckpt).run(image))
