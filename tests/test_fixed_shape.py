"""Fixed-shape artifacts (`dereflect export --fixed-shape HxW`): what export writes and records, and
how the runtime's tiler feeds them, with the real ONNX Runtime on scikit-image's bundled photos.

One CLI run builds the 512x512 (tile) and 384x512 (preview) artifacts for onnx, ort and coreml
(fp32) of the shipped student-nano (trained weights: how much padding the last tile changes depends
on what the network learned, and random weights exaggerate it); one Exporter run builds the
dynamic ONNX of the same student to compare against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli

from dereflect import metrics
from dereflect.errors import DereflectError
from dereflect.export.formats import FORMATS_BY_NAME, format_status
from dereflect.export.manifest import io_spec, load_manifest_for, validate_manifest
from dereflect.export.pipeline import Exporter, ExportOptions
from dereflect.runtime import load
from dereflect.runtime.tiling import network_input, run_tiled

SMALL = ["--size", "64", "--val-count", "2"]
SHAPES = ("512x512", "384x512")
CAN_COREML = format_status("coreml").can_build


@pytest.fixture(scope="module")
def shipped() -> Path:
    from dereflect.runtime.resolve import shipped_checkpoint

    path = shipped_checkpoint("student-nano")
    if path is None:
        pytest.skip("student-nano is not shipped in this checkout")
    return path


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory, shipped) -> Path:
    out = tmp_path_factory.mktemp("dynamic")
    opts = ExportOptions(precision="fp32", size=64, val_count=2)
    [result] = Exporter(shipped, out, opts, log=lambda _: None).run([FORMATS_BY_NAME["onnx"]])
    assert result.status == "passed"
    return result.artifact


@pytest.fixture(scope="module")
def fixed(tmp_path_factory, shipped, dynamic_onnx):
    """`dereflect export CKPT --format onnx,ort[,coreml] --fixed-shape 512x512 --fixed-shape 384x512`."""
    out = tmp_path_factory.mktemp("fixed")
    formats = "onnx,ort" + (",coreml" if CAN_COREML else "")
    from dereflect.cli import main

    argv = ["export", str(shipped), "--format", formats, "--out", str(out), "--fixed-shape", SHAPES[0], "--fixed-shape", SHAPES[1], *SMALL]
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return out, code


def test_export_writes_one_artifact_per_shape_with_static_io(fixed):
    out, code = fixed
    assert code == 0
    for shape in SHAPES:
        h, w = (int(v) for v in shape.split("x"))
        for name in (f"student-nano-{shape}-fp32.onnx", f"student-nano-{shape}-fp32.ort", f"student-nano-{shape}-fp32.web.onnx"):
            manifest = load_manifest_for(out / name)
            assert manifest["parity"]["status"] == "passed", name
            assert manifest["inputs"][0]["shape"] == [1, 3, h, w] and manifest["outputs"][0]["shape"] == [1, 3, h, w]
            assert manifest["constraints"]["fixed_hw"] == [h, w] and manifest["constraints"]["multiple_of"] == 8
            assert manifest["constraints"]["dynamic_axes"] == {"input": {}, "transmission": {}}
            # the gate ran at the artifact's own shape (fp32 budget: max |diff| 1e-4 vs PyTorch)
            assert f"centre {h}x{w}" in manifest["parity"]["data"] and manifest["parity"]["metrics"]["max_abs_diff"] < 1e-4
        graph = onnx.load(str(out / f"student-nano-{shape}-fp32.onnx")).graph
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert dims == [1, 3, h, w]
        assert all(d.HasField("dim_value") for v in graph.value_info for d in v.type.tensor_type.shape.dim)
        ort_manifest = json.loads((out / f"student-nano-{shape}-fp32.ort.json").read_text())
        assert ort_manifest["ort_format"]["optimization_style"] == "Runtime"  # no CPU-only fused ops for NNAPI / Core ML
    report = json.loads((out / "export-report-fp32.json").read_text())
    assert {r["shape"] for r in report["results"]} == set(SHAPES)


def test_dynamic_export_is_unchanged(dynamic_onnx):
    manifest = load_manifest_for(dynamic_onnx)
    assert manifest["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert "fixed_hw" not in manifest["constraints"] and "mobile_usability" not in manifest


def _float(photo: np.ndarray) -> np.ndarray:
    return photo.astype(np.float32) / np.float32(255.0)


@pytest.mark.parametrize(
    "name, shape, tiles",
    [
        ("chelsea", "512x512", 1),  # 300x451: smaller than the tile, padded up to it
        ("coffee", "512x512", 2),  # 400x600: wider than the tile, both tiles padded at the bottom
        ("coffee", "384x512", 4),  # larger than the tile both ways: the last row and column flush with the edge
        ("rocket", "384x512", 4),  # 427x640
    ],
)
def test_tiler_feeds_fixed_tiles_and_matches_the_dynamic_artifact(fixed, dynamic_onnx, name, shape, tiles):
    from skimage import data

    out, _ = fixed
    h, w = (int(v) for v in shape.split("x"))
    photo = np.ascontiguousarray(getattr(data, name)())
    assert photo.shape[0] % h and photo.shape[1] % w
    session = load(out / f"student-nano-{shape}-fp32.onnx", backend="onnxruntime")
    assert session.impl.fixed == (h, w) and f"fixed {shape} tiles" in session.describe()
    dynamic = load(dynamic_onnx, backend="onnxruntime")
    assert dynamic.impl.fixed is None

    seen: list[tuple[int, ...]] = []
    infer = session.impl.infer

    def recording(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return infer(batch)

    session.impl.infer = recording
    got = session.run(_float(photo))
    plan = session.plan(*photo.shape[:2])
    assert got.shape == photo.shape and plan.count == tiles and seen == [(1, 3, h, w)] * tiles

    # Same tiles through the dynamic artifact: the fixed graph computes what it computes (fp32 gate 1e-4).
    same_tiles = run_tiled(dynamic.impl.infer, _float(photo), plan)
    assert np.abs(got - same_tiles).max() <= 1e-4

    # The whole photo through the dynamic artifact: tiling, and the padding of a tile that the image
    # does not fill, change pixels near those edges only. Budget: SSIM between the two at least
    # 1 - 0.002 (the fp16 gate's SSIM budget), a few 8-bit levels at most, ~0 on average.
    whole = dynamic.run(_float(photo))
    diff = np.abs(got - whole) * 255.0
    ssim = metrics.ssim(got.astype(np.float64) * 255.0, whole.astype(np.float64) * 255.0)
    print(f"{name} {shape}: fixed tiles vs dynamic whole: max {diff.max():.3f} mean {diff.mean():.5f} levels, SSIM {ssim:.6f}")
    assert ssim >= 1 - 0.002 and diff.max() <= 4.0 and diff.mean() <= 0.05


def test_ort_artifact_runs_like_the_onnx_one(fixed):
    from skimage import data

    out, _ = fixed
    photo = np.ascontiguousarray(data.coffee())
    via_ort = load(out / "student-nano-384x512-fp32.ort", backend="onnxruntime")
    via_onnx = load(out / "student-nano-384x512-fp32.onnx", backend="onnxruntime")
    assert via_ort.impl.fixed == (384, 512)
    a, b = via_ort.run(photo), via_onnx.run(photo)
    assert a.shape == photo.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_a_tile_padded_up_gives_the_dynamic_result_on_its_pixels(fixed, dynamic_onnx):
    """One network call: an image smaller than the tile, padded to it, vs the dynamic graph on the same padded input."""
    out, _ = fixed
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (200, 344, 3), dtype=np.uint8)
    x = network_input(crop, 384, 512)
    a = load(out / "student-nano-384x512-fp32.onnx", backend="onnxruntime").impl.infer(x)
    b = load(dynamic_onnx, backend="onnxruntime").impl.infer(x)
    assert a.shape == (1, 3, 384, 512) and np.abs(a - b).max() <= 1e-5


@pytest.mark.skipif(not CAN_COREML, reason=format_status("coreml").build_reason or "coremltools missing")
def test_coreml_fixed_packages_record_their_spec(fixed):
    out, _ = fixed
    for shape in SHAPES:
        h, w = (int(v) for v in shape.split("x"))
        manifest = load_manifest_for(out / f"student-nano-{shape}-fp32.mlpackage")
        spec = manifest["coreml"]
        assert spec["shapes"]["mode"] == "fixed" and spec["shapes"]["sizes_hw"] == [[h, w]]
        assert spec["validation"]["io"]["input"] == {"shape": [1, 3, h, w], "ranges": [], "enumerated": []}
        assert manifest["constraints"]["fixed_hw"] == [h, w]
        assert manifest["parity"]["status"] == ("not run" if not format_status("coreml").can_run else "passed")


@pytest.mark.skipif(not CAN_COREML, reason=format_status("coreml").build_reason or "coremltools missing")
def test_coreml_enumerated_takes_the_fixed_shapes_in_one_package(tmp_path, ckpt, student):
    opts = ExportOptions(precision="fp16", size=64, val_count=2, coreml_shapes="enumerated", fixed_shapes=((512, 512), (384, 512)))
    [result] = Exporter(ckpt, tmp_path, opts, log=lambda _: None, model=student).run([FORMATS_BY_NAME["coreml"]])
    assert result.status == "not run" or result.status == "passed", result.message
    assert result.artifact.name == "student-nano-enumerated-fp16.mlpackage" and result.shape == "enumerated"
    manifest = load_manifest_for(result.artifact)
    assert manifest["coreml"]["shapes"]["mode"] == "enumerated"
    assert manifest["constraints"]["sizes_hw"] == [[512, 512], [384, 512]]
    assert sorted(manifest["coreml"]["validation"]["io"]["input"]["enumerated"]) == [[1, 3, 384, 512], [1, 3, 512, 512]]
    if not format_status("coreml").can_run:
        assert manifest["parity"]["status"] == "not run"
        pytest.skip("Core ML predicts only on macOS: the package converted and validated, running it needs a Mac")


def test_bad_fixed_shapes_are_usage_errors(ckpt, tmp_path, capsys):
    code, _, err = run_cli(["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "a"), "--fixed-shape", "500x512"], capsys)
    assert code == 2 and "--fixed-shape 500x512" in err and "multiples of 8" in err and "496 or 504" in err
    code, _, err = run_cli(["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "b"), "--fixed-shape", "512"], capsys)
    assert code == 2 and "'512' is not HEIGHTxWIDTH" in err
    code, _, err = run_cli(["export", str(ckpt), "--format", "openvino", "--out", str(tmp_path / "c"), "--fixed-shape", "512x512"], capsys)
    assert code == 2 and "takes no --fixed-shape" in err
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in "abc")


def test_manifest_refuses_a_fixed_shape_off_the_multiple():
    data = {
        "schema": "dereflect-export/1",
        "format": "onnx",
        "precision": "fp32",
        "runtime": "onnxruntime",
        "artifact": "x.onnx",
        "artifact_sha256": "0" * 64,
        **io_spec(batch=1, multiple_of=16, fixed_hw=(512, 512)),
        "source": {},
        "tools": {},
        "parity": {"status": "passed"},
    }
    validate_manifest(data)
    data["constraints"]["fixed_hw"] = [520, 512]
    with pytest.raises(DereflectError, match="not a multiple of 'multiple_of' 16"):
        validate_manifest(data)


def test_shapes_must_be_multiples_of_the_models_own_multiple():
    """The MobileNetV2 students need multiples of 16 (the manifest's multiple_of): 504 is refused with the nearest sizes."""
    from dereflect.errors import UsageError
    from dereflect.export.onnx import check_fixed_shape, parse_hw

    check_fixed_shape(parse_hw("512x384"), 16, "student-mnv2-hq")
    with pytest.raises(
        UsageError,
        match=r"--fixed-shape 504x512: height and width must be multiples of 16 \(student-mnv2-hq's H/W multiple\); nearest: height 496 or 512, width 512",
    ):
        check_fixed_shape(parse_hw("504x512"), 16, "student-mnv2-hq")
    with pytest.raises(UsageError, match="height and width must be 1..8192 px"):
        parse_hw("0x512")


def test_device_runner_tiles_a_fixed_shape_artifact_like_the_runtime(fixed):
    """speed/device_runner.py (standalone, for phone-class boards) reads constraints.fixed_hw and
    feeds the same tiles, blended the same way, as dereflect's runtime."""
    import importlib.util
    import sys

    from skimage import data

    runner_path = Path(__file__).resolve().parents[1] / "speed" / "device_runner.py"
    spec = importlib.util.spec_from_file_location("device_runner_fixed", runner_path)
    runner = importlib.util.module_from_spec(spec)
    sys.modules["device_runner_fixed"] = runner
    spec.loader.exec_module(runner)
    out, _ = fixed
    artifact = out / "student-nano-384x512-fp32.onnx"
    model = runner.Model(artifact, json.loads((out / f"{artifact.name}.json").read_text()), "onnxruntime", None)
    assert model.fixed == (384, 512)
    for name in ("chelsea", "coffee"):  # smaller than the tile; 2x2 tiles
        photo = np.ascontiguousarray(getattr(data, name)())
        assert model.prepare(photo).shape == (1, 3, 384, 512)
        ours = load(artifact, backend="onnxruntime").run(photo)
        theirs = model.run(photo)
        assert theirs.shape == photo.shape and np.abs(theirs.astype(int) - ours.astype(int)).max() <= 1


@pytest.mark.skipif(format_status("openvino").build_reason != "", reason=format_status("openvino").build_reason or "openvino")
def test_openvino_runs_the_fixed_onnx_in_fixed_tiles(fixed):
    from skimage import data

    out, _ = fixed
    photo = np.ascontiguousarray(data.coffee())
    via_ov = load(out / "student-nano-384x512-fp32.onnx", backend="openvino")
    assert via_ov.impl.fixed == (384, 512) and via_ov.plan(*photo.shape[:2]).count == 4
    ours = load(out / "student-nano-384x512-fp32.onnx", backend="onnxruntime").run(photo)
    assert np.abs(via_ov.run(photo).astype(int) - ours.astype(int)).max() <= 1
