"""The export stage's checks without building a model: the format table and option validation,
manifests (read/validate/verify), calibration and pair folders, budgets, bad checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dereflect.cli import main
from dereflect.errors import DereflectError, UsageError
from dereflect.export import parity
from dereflect.export.calib import load_calibration, load_pairs
from dereflect.export.formats import FORMATS, FORMATS_BY_NAME, format_status, resolve_formats, table_rows
from dereflect.export.manifest import (
    build_manifest,
    find_artifacts,
    load_manifest_for,
    manifest_path,
    read_manifest,
    sha256_artifact,
    write_manifest,
)
from dereflect.export.pipeline import ExportOptions, check_options
from dereflect.export.quantize import resolve_exclude
from dereflect.export.tensorrt import builder_flags, make_plan, parse_shape


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _write(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _colour(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ format table


def test_table_is_one_list_driving_everything():
    assert [f.name for f in FORMATS] == ["onnx", "ort", "openvino", "coreml", "tensorrt", "pte", "tflite"]
    assert FORMATS_BY_NAME["openvino"].extra == "openvino" and FORMATS_BY_NAME["openvino"].is_dir
    assert FORMATS_BY_NAME["coreml"].needs == "macos" and FORMATS_BY_NAME["tensorrt"].needs == "cuda"
    assert FORMATS_BY_NAME["onnx"].artifact_name("student-nano", "int8") == "student-nano-int8.onnx"
    rows = table_rows()
    assert [r["name"] for r in rows] == [f.name for f in FORMATS]
    assert all(set(r["precisions"]) == {"fp32", "fp16", "int8"} for r in rows if r["name"] not in ("pte", "tflite"))
    assert all(r["precisions"] == ["fp32", "int8"] and r["extra"] == "mobile" for r in rows if r["name"] in ("pte", "tflite"))


def test_all_builds_what_it_can_and_says_why_not():
    build, skipped = resolve_formats("all", "int8")
    names = [f.name for f in build] + [f.name for f, _ in skipped]
    assert sorted(names) == sorted(FORMATS_BY_NAME)
    for fmt, reason in skipped:
        assert reason and not format_status(fmt.name).can_build
    assert "onnx" in [f.name for f in build]  # core dependency: always buildable
    if not format_status("tensorrt").can_build:
        assert "dereflect[tensorrt]" in dict((f.name, r) for f, r in skipped)["tensorrt"]


def test_unsupported_requests_are_usage_errors():
    with pytest.raises(UsageError, match="unknown precision 'bf16'.*fp32, fp16, int8"):
        resolve_formats("onnx", "bf16")
    with pytest.raises(UsageError, match="unknown format 'tfjs'"):
        resolve_formats("tfjs", "fp32")
    with pytest.raises(UsageError, match="LiteRT.*does not support fp16"):
        resolve_formats("tflite", "fp16")
    with pytest.raises(UsageError, match="cannot be combined"):
        resolve_formats("all,onnx", "fp32")
    if not format_status("tensorrt").can_build:
        with pytest.raises(UsageError, match=r"cannot be built on this machine.*dereflect\[tensorrt\]"):
            resolve_formats("tensorrt", "fp16")


def test_option_combinations_refused_up_front():
    onnx_only = [FORMATS_BY_NAME["onnx"]]
    with pytest.raises(UsageError, match="--calib is only used by --precision int8"):
        check_options(onnx_only, ExportOptions(precision="fp32", calib=Path("x")))
    with pytest.raises(UsageError, match="--int8-exclude"):
        check_options(onnx_only, ExportOptions(precision="fp16", int8_exclude=("decoder.head",)))
    with pytest.raises(UsageError, match="Core ML only"):
        check_options(onnx_only, ExportOptions(precision="int8", palettize=4))
    with pytest.raises(UsageError, match="multiple of 8"):
        check_options(onnx_only, ExportOptions(size=100))
    with pytest.raises(UsageError, match="H and W must be multiples of 8"):
        check_options([FORMATS_BY_NAME["tensorrt"]], ExportOptions(trt_shapes=("1x3x60x64", "1x3x64x64", "1x3x64x64")))
    check_options(onnx_only, ExportOptions(precision="int8", calib=Path("x"), int8_exclude=("a",)))  # fine


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    code, err = _cli(["export", str(tmp_path / "x.safetensors"), "--format", "onnx", "--precision", "bf16", "--out", str(tmp_path)], capsys)
    assert code == 2 and "error: unknown precision 'bf16'" in err
    code, err = _cli(
        ["export", str(tmp_path / "x.safetensors"), "--format", "onnx", "--calib", str(tmp_path), "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "--calib is only used by --precision int8" in err


def test_list_formats(capsys):
    assert _cli(["export", "x", "--out", "y", "--list-formats"], capsys)[0] == 0


# ------------------------------------------------------------------------------------------ checkpoints


def test_teacher_and_junk_checkpoints_refused(tmp_path, capsys):
    from safetensors.numpy import save_file

    teacher = tmp_path / "teacher.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(teacher), metadata={"dereflect": json.dumps({"model": "teacher-small", "config": {}})})
    code, err = _cli(["export", str(teacher), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and err.startswith(f"error: {teacher}: expected a student checkpoint")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    code, err = _cli(["export", str(junk), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and f"error: {junk}: not a readable safetensors checkpoint" in err


# ------------------------------------------------------------------------------------------ manifests


def _fake_artifact(tmp_path: Path, status: str = "passed") -> Path:
    artifact = tmp_path / "m-fp32.onnx"
    artifact.write_bytes(b"graph bytes")
    data = build_manifest(
        fmt="onnx",
        precision="fp32",
        runtime="onnxruntime",
        artifact=artifact,
        source={"checkpoint": "c", "sha256": "0" * 64, "model": "student-nano", "config": {}},
        parity={"status": status, "metrics": {}},
    )
    write_manifest(artifact, data)
    return artifact


def test_manifest_round_trip_and_sha_mismatch(tmp_path):
    artifact = _fake_artifact(tmp_path)
    assert manifest_path(artifact) == tmp_path / "m-fp32.onnx.json"
    data = load_manifest_for(artifact)
    assert data["artifact_sha256"] == sha256_artifact(artifact) and data["constraints"]["multiple_of"] == 8
    assert data["inputs"][0]["name"] == "input" and data["outputs"][0]["name"] == "transmission"
    assert [a for a, _ in find_artifacts(tmp_path)] == [artifact]
    artifact.write_bytes(b"graph bytes, tampered")
    with pytest.raises(DereflectError, match="sha256 mismatch") as err:
        load_manifest_for(artifact)
    assert err.value.path == str(artifact)


def test_corrupt_and_incomplete_manifests(tmp_path):
    artifact = _fake_artifact(tmp_path)
    path = manifest_path(artifact)
    good = json.loads(path.read_text())
    path.write_text("{ not json")
    with pytest.raises(DereflectError, match="corrupt manifest: not valid JSON") as err:
        read_manifest(path)
    assert err.value.path == str(path)
    for key, value, message in [
        ("parity", None, "no 'parity'"),
        ("schema", "other/1", "not a dereflect export manifest"),
        ("artifact_sha256", "abc", "not a sha256"),
        ("inputs", "x", "wrong type"),
    ]:
        bad = dict(good)
        if value is None:
            del bad[key]
        else:
            bad[key] = value
        path.write_text(json.dumps(bad))
        with pytest.raises(DereflectError, match=message):
            load_manifest_for(artifact)
    path.write_text(json.dumps({**good, "parity": {"status": "maybe"}}))
    with pytest.raises(DereflectError, match="parity status 'maybe'"):
        read_manifest(path)
    with pytest.raises(DereflectError, match="no such manifest"):
        read_manifest(tmp_path / "absent.json")


def test_directory_hash_is_deterministic_and_sensitive(tmp_path):
    a = tmp_path / "a_openvino"
    (a / "sub").mkdir(parents=True)
    (a / "m.xml").write_text("xml")
    (a / "sub" / "m.bin").write_bytes(b"\x00\x01")
    first = sha256_artifact(a)
    assert sha256_artifact(a) == first
    (a / "sub" / "m.bin").write_bytes(b"\x00\x02")
    assert sha256_artifact(a) != first
    (a / "sub" / "m.bin").write_bytes(b"\x00\x01")
    (a / "sub" / "m.bin").rename(a / "sub" / "n.bin")
    assert sha256_artifact(a) != first  # names count, not only bytes


# ------------------------------------------------------------------------------------------ calibration / pairs


def test_calibration_folder_is_read_and_fitted(tmp_path):
    for i in range(5):
        _write(tmp_path / f"c{i}.png", _colour(i, 48 + 8 * i))
    data = load_calibration(tmp_path, count=4, size=32)
    assert data.images.shape == (4, 3, 32, 32) and data.images.dtype == np.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0 and data.truth is None
    assert data.names == ["c0.png", "c1.png", "c2.png", "c3.png"]


def test_bad_calibration_folders(tmp_path):
    empty = tmp_path / "text"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(DereflectError, match="no images found"):
        load_calibration(empty, size=32)
    few = tmp_path / "few"
    for i in range(2):
        _write(few / f"{i}.png", _colour(i))
    with pytest.raises(DereflectError, match="only 2 calibration image") as err:
        load_calibration(few, size=32)
    assert err.value.path == str(few)
    grey = tmp_path / "grey"
    for i in range(4):
        _write(grey / f"{i}.png", np.repeat(_colour(i)[:, :, :1], 3, axis=2))
    with pytest.raises(DereflectError, match="greyscale"):
        load_calibration(grey, size=32)
    broken = tmp_path / "broken"
    for i in range(3):
        _write(broken / f"{i}.png", _colour(i))
    (broken / "3.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DereflectError) as err:
        load_calibration(broken, size=32)
    assert err.value.path.endswith("3.png")
    small = tmp_path / "small"
    for i in range(4):
        _write(small / f"{i}.png", _colour(i, 16))
    with pytest.raises(DereflectError, match="under half the export size"):
        load_calibration(small, size=64)
    with pytest.raises(DereflectError, match="too few"):
        load_calibration(None, count=2, size=32)


def test_pairs_folder(tmp_path):
    for i in range(3):
        _write(tmp_path / "blended" / f"p{i}.png", _colour(i))
        _write(tmp_path / "transmission_layer" / f"p{i}.jpg", _colour(10 + i))
    _write(tmp_path / "blended" / "orphan.png", _colour(9))
    data = load_pairs(tmp_path, count=8, size=32)
    assert data.names == ["p0", "p1", "p2"] and data.truth is not None and data.truth.shape == (3, 3, 32, 32)
    with pytest.raises(DereflectError, match="needs blended/ and transmission/"):
        load_pairs(tmp_path / "blended", size=32)
    _write(tmp_path / "transmission_layer" / "p1.jpg", _colour(11, 80))
    with pytest.raises(DereflectError, match="differs from its blended image"):
        load_pairs(tmp_path, size=32)


def test_default_sets_are_synthesised_with_ground_truth():
    data = load_pairs(None, count=2, size=32, seed=3)
    again = load_pairs(None, count=2, size=32, seed=3)
    assert data.truth is not None and data.images.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(data.images, again.images)  # deterministic for the seed
    assert not np.array_equal(data.images, data.truth)  # blended != transmission


# ------------------------------------------------------------------------------------------ budgets, exclusion, TensorRT data


def test_budgets_defaults_overrides_and_verdicts():
    assert parity.budget_for("fp32").max_abs_diff == 1e-4
    assert parity.budget_for("fp16").max_ssim_drop == 0.002 and parity.budget_for("int8").max_ssim_drop == 0.01
    assert parity.budget_for("int8", max_ssim_drop=0.02, max_lmse_rise=0.001).as_dict() == {"max_ssim_drop": 0.02, "max_lmse_rise": 0.001}
    budget = parity.budget_for("int8")
    assert parity.judge({"ssim_drop": 0.005, "max_abs_diff": 0.1}, budget) == []
    assert parity.judge({"ssim_drop": 0.02}, budget) == ["ssim_drop 0.02 > 0.01"]
    assert "give --pairs" in parity.judge({"max_abs_diff": 0.0}, budget)[0]
    assert parity.judge({"max_abs_diff": float("nan")}, parity.budget_for("fp32")) == ["max_abs_diff nan > 0.0001"]


def test_gate_on_a_numpy_runner():
    from dereflect.export.calib import ImageSet

    rng = np.random.default_rng(0)
    truth = rng.random((2, 3, 32, 32), dtype=np.float32)
    data = ImageSet(np.clip(truth + 0.1, 0, 1), truth, ["a", "b"], "test")
    ref = parity.make_reference(lambda x: x, data)  # a "model" that returns its input
    same = parity.check(lambda x: x, ref, parity.budget_for("fp32"), "numpy")
    assert same["status"] == "passed" and same["metrics"]["max_abs_diff"] == 0.0
    noisy = parity.check(lambda x: np.clip(x + 0.05 * np.sign(np.sin(x * 999)), 0, 1), ref, parity.budget_for("fp16"), "numpy")
    assert noisy["status"] == "failed" and noisy["metrics"]["ssim_drop"] > 0.002
    assert noisy["failures"][0].startswith("ssim_drop")


def test_int8_exclude_resolution():
    nodes = ["encoder.stem.0/Conv", "encoder.stem.1/LeakyRelu", "decoder.head/Conv", "decoder.head2/Conv", "model/Add"]
    assert resolve_exclude(["decoder.head"], nodes) == ["decoder.head/Conv"]
    assert resolve_exclude(["encoder", "decoder.head/Conv"], nodes) == [
        "encoder.stem.0/Conv",
        "encoder.stem.1/LeakyRelu",
        "decoder.head/Conv",
    ]
    with pytest.raises(UsageError, match="'decoder.tail' matches no layer; layers: encoder.stem.0, decoder.head"):
        resolve_exclude(["decoder.tail"], nodes)


def test_tensorrt_plan_as_data():
    assert parse_shape("1x3x512x512") == (1, 3, 512, 512) and parse_shape("256") == (1, 3, 256, 256)
    assert builder_flags("fp32") == [] and builder_flags("fp16") == ["FP16"] and builder_flags("int8") == ["INT8", "FP16"]
    for bad in ("1x4x64x64", "64x60", "axb"):
        with pytest.raises(UsageError):
            parse_shape(bad)
    plan = make_plan("m.onnx", "fp16", (1, 3, 64, 64), (1, 3, 512, 512), (2, 3, 1024, 1024))
    assert plan.as_dict()["flags"] == ["FP16"] and plan.timing_cache.endswith("tensorrt.timing.cache")
    with pytest.raises(UsageError, match="min <= opt <= max"):
        make_plan("m.onnx", "fp16", (1, 3, 512, 512), (1, 3, 64, 64), (1, 3, 1024, 1024))


def test_cli_bad_calibration_folder_is_one_error_before_any_build(tmp_path, capsys):
    from dereflect.models import create_model, save_checkpoint

    ckpt = save_checkpoint(create_model("student-nano"), tmp_path / "nano.safetensors")
    few = tmp_path / "few"
    for i in range(2):
        _write(few / f"{i}.png", _colour(i))
    code, err = _cli(
        [
            "export",
            str(ckpt),
            "--format",
            "all",
            "--precision",
            "int8",
            "--calib",
            str(few),
            "--out",
            str(tmp_path / "out"),
            "--size",
            "32",
        ],
        capsys,
    )
    assert code == 1 and err.strip() == (
        f"error: {few}: only 2 calibration image(s); INT8 calibration needs at least 4 (16-64 photos like the ones the model will see)"
    )
    assert not list((tmp_path / "out").glob("*.onnx"))
