"""`dereflect remove --burst` end to end (frames and an mp4 written with PyAV), its fallbacks, and the
burst model's export with parity on ONNX Runtime.

The CLI runs the shipped burst-base (real weights, `--model burst-base`); its output is compared with the
same network run directly on the same frames (the default burst-mnv2: tests/test_burst_student.py). Sequences come from the repository's synthesis, with small motion so no
frame needs pre-alignment (what the comparison assumes).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from torch import nn

from dereflect.burst import frames as frames_mod
from dereflect.burst import pipeline
from dereflect.data.photos import skimage_photos
from dereflect.data.synth import SynthConfig, synthesize_sequence
from dereflect.images import from_float, to_float
from dereflect.models import create_model, load_checkpoint, save_checkpoint
from dereflect.runtime import load

SIZE = 96
SMALL_MOTION = SynthConfig(t_shift=(2.0, 4.0), r_opposite=(0.5, 1.0), r_same=(1.5, 2.0))

av = pytest.importorskip("av", reason="PyAV (dereflect[video]) decodes clips")


def _sequence(seed: int, n: int = 5, size: int = SIZE, photos: tuple[int, int] | None = None) -> list[np.ndarray]:
    pool = skimage_photos()
    rng = np.random.default_rng(seed)
    t_idx, r_idx = photos if photos is not None else rng.choice(len(pool), size=2, replace=False)
    seq = synthesize_sequence(pool[t_idx], pool[r_idx], n_frames=n, size=size, rng=rng, config=SMALL_MOTION)
    return [from_float(f) for f in seq.frames]


def _direct(frames: list[np.ndarray]) -> np.ndarray:
    """burst-base on the frames as they are (the reference in the middle), uint8 HWC."""
    net = load_checkpoint(Path(pipeline.weights_dir()) / "burst-base.safetensors")
    x = torch.from_numpy(np.stack([to_float(f) for f in frames]).transpose(0, 3, 1, 2))[None]
    with torch.no_grad():
        y = net(x)[0].permute(1, 2, 0).numpy()
    return from_float(y)


def _write_frames(folder: Path, frames: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        path = folder / f"f{i}.png"
        Image.fromarray(f).save(path)
        paths.append(path)
    return paths


def _write_mp4(path: Path, frames: list[np.ndarray]) -> None:
    """A short clip with PyAV's bundled FFmpeg (MPEG-4 part 2: an encoder every build has)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_frames_end_to_end(tmp_path, capsys):
    frames = _sequence(3)
    paths = _write_frames(tmp_path / "in", frames)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["remove", "--burst", *map(str, paths), "-o", str(out), "--save-reflection", "--model", "burst-base"], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["f2.png", "f2_reflection.png"]
    assert "f2.png (reference)" in stdout and "burst-base" in stdout and "pre-aligned" not in stdout
    clean = np.asarray(Image.open(out / "f2.png"))
    want = _direct(frames)
    assert clean.shape == frames[2].shape
    assert np.abs(clean.astype(int) - want.astype(int)).max() <= 1  # the model's own output, through the CLI
    assert np.abs(clean.astype(int) - frames[2].astype(int)).mean() > 0.5  # it removed something
    removed = np.asarray(Image.open(out / "f2_reflection.png"))
    assert np.array_equal(removed, np.clip(frames[2].astype(int) - clean.astype(int), 0, None).astype(np.uint8))
    assert all(p.is_file() for p in paths)  # inputs untouched


def test_mp4_end_to_end(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    _write_mp4(clip, _sequence(5, n=9, size=112))
    out = tmp_path / "out"
    code, stdout, err = run_cli(["remove", "--burst", str(clip), "-o", str(out), "--model", "burst-base"], capsys)
    assert code == 0, err
    assert "picked 5 of 9 frames" in stdout and "frame 4 (reference)" in stdout
    picked = [int(i) for i in re.findall(r"frame (\d+) \(", stdout.split("burst:", 1)[1].splitlines()[0])]
    assert len(picked) == 5 and picked[2] == 4 and picked == sorted(set(picked))
    decoded = _decoded(clip)
    clean = np.asarray(Image.open(out / "clip.png"))
    want = _direct([decoded[i] for i in picked])
    assert clean.shape == (112, 112, 3)
    assert np.abs(clean.astype(int) - want.astype(int)).max() <= 1


def test_mismatched_sizes_fall_back_to_the_student(tmp_path, capsys):
    frames = _sequence(4)
    frames[4] = frames[4][:80]
    paths = _write_frames(tmp_path / "in", frames)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["remove", "--burst", *map(str, paths), "-o", str(out)], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "f4.png" in lines[0]
    assert "burst frames must have one size" in lines[0] and "falling back to the single-image student on f2.png" in lines[0]
    clean = np.asarray(Image.open(out / "f2.png"))
    assert np.array_equal(clean, load("default").run(frames[2]))


def test_cut_in_clip_falls_back(tmp_path, capsys):
    clip = tmp_path / "cut.mp4"
    scene_a = _sequence(6, n=3, size=112, photos=(0, 1))
    scene_b = _sequence(7, n=3, size=112, photos=(4, 5))
    _write_mp4(clip, scene_a + scene_b)
    out = tmp_path / "out"
    code, _, err = run_cli(["remove", "--burst", str(clip), "-o", str(out)], capsys)
    assert code == 0, err
    assert "a cut between frames 2 and 3" in err and "falling back to the single-image student on frame 3" in err
    clean = np.asarray(Image.open(out / "cut.png"))
    assert np.array_equal(clean, load("default").run(_decoded(clip)[3]))


def test_corrupt_mp4_is_one_line(tmp_path, capsys):
    clip = tmp_path / "broken.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00" + bytes(range(256)) * 8)
    code, _, err = run_cli(["remove", "--burst", str(clip), "-o", str(tmp_path / "out")], capsys)
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {clip}: ") and "video" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_frame_count_and_unregistered_frame(tmp_path, capsys):
    paths = _write_frames(tmp_path / "in", _sequence(8)[:2])
    code, _, err = run_cli(["remove", "--burst", *map(str, paths), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "--burst takes 3-7 frames or one video clip, got 2 file(s)" in err
    frames = _sequence(9, photos=(0, 1))
    frames[0] = _sequence(10, photos=(4, 5))[0]  # another scene, same size
    paths = _write_frames(tmp_path / "in2", frames)
    code, _, err = run_cli(["remove", "--burst", *map(str, paths), "-o", str(tmp_path / "o2")], capsys)
    assert code == 0 and "f0.png: does not register with the reference f2.png" in err and "falling back" in err


def test_phase_shift_measures_translation():
    img = skimage_photos()[0][:256, :256]
    grey = np.asarray(Image.fromarray(img).convert("L"), dtype=np.float32)
    moved = np.roll(grey, (-3, 5), axis=(0, 1))  # content moves 5 px right and 3 px up
    dx, dy, psr = frames_mod.phase_shift(grey, moved)
    assert abs(dx - 5) < 0.3 and abs(dy + 3) < 0.3 and psr > 50


def test_fill_frames_keeps_pooling_exact():
    assert pipeline.fill_frames([0, 1, 2], 1, 5) == [0, 2, 1, 0, 2]
    assert pipeline.fill_frames([0, 1, 2, 3, 4], 2, 5) == [0, 1, 2, 3, 4]
    net = _tiny_burst()
    x = torch.rand(1, 3, 3, 32, 40)
    with torch.no_grad():
        three = net(x)
        five = net(x[:, [0, 2, 1, 0, 2]])
    assert torch.allclose(three, five, atol=1e-5)  # mean and max over [a, b, a, b] = over [a, b]


# ---------------------------------------------------------------------------- export


def _tiny_burst() -> nn.Module:
    """A small burst model with seeded He-normal weights (its outputs differ from the input)."""
    model = create_model("burst-base", widths=(8, 8, 8, 16), blocks=(0, 0, 1), dyn_channels=(8, 8, 8), flow_radius=(1, 1, 1))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.05)
        model.decoder.head.weight.mul_(0.08)
    return model.eval()


@pytest.mark.slow
def test_burst_export_parity_onnxruntime(tmp_path):
    from dereflect.export.formats import FORMATS_BY_NAME
    from dereflect.export.pipeline import Exporter, ExportOptions

    ckpt = save_checkpoint(_tiny_burst(), tmp_path / "tiny-burst.safetensors")
    opts = ExportOptions(size=64, val_count=3)
    results = Exporter(ckpt, tmp_path / "art", opts, log=lambda _: None).run([FORMATS_BY_NAME["onnx"]])
    (res,) = results
    assert res.status == "passed", res.message or res.parity
    import json

    manifest = json.loads(res.manifest.read_text())
    assert manifest["inputs"][0]["shape"] == ["batch", 5, 3, "height", "width"]
    assert manifest["outputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert manifest["constraints"]["frames"] == 5 and manifest["constraints"]["reference_frame"] == 2
    assert manifest["graph"]["ops"].get("GridSample", 0) > 0
    assert manifest["parity"]["metrics"]["max_abs_diff"] <= 1e-4 and manifest["parity"]["metrics"]["images"] == 3
    # The runtime reads the contract from the manifest: a burst on ONNX Runtime = the same burst in PyTorch.
    on_ort = pipeline.load_model(str(res.artifact))
    on_torch = pipeline.load_model(str(ckpt))
    assert on_ort.backend == "onnxruntime" and on_ort.frames == 5
    burst = frames_mod.from_arrays(_sequence(11, n=3, size=64), [Path(f"f{i}.png") for i in range(3)], 1)
    a, b = pipeline.remove(burst, on_ort).clean, pipeline.remove(burst, on_torch).clean
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    # A single-image `dereflect remove` refuses it at load, naming what to do.
    with pytest.raises(Exception, match="burst"):
        load(res.artifact).run(np.zeros((16, 16, 3), np.uint8))


def test_export_by_name_lists_formats_a_burst_model_skips(tmp_path, capsys):
    """`dereflect export --model burst-base` finds the shipped model by name; a format outside the burst
    model's export (Core ML here) is listed as skipped with the reason, and nothing is written for it."""
    pytest.importorskip("coremltools", reason="the coreml row is refused up front where coremltools is missing")
    out = tmp_path / "art"
    code, stdout, err = run_cli(
        ["export", "--model", "burst-base", "--format", "coreml", "--out", str(out), "--val-count", "1", "--size", "32"], capsys
    )
    assert code == 0, err
    assert "coreml: skipped (burst-base takes 5 frames; its export covers onnx, ort, openvino" in stdout
    assert not list(out.glob("*.mlpackage"))
    code, _, err = run_cli(["export", "burst-base", "--model", "burst-base", "--out", str(out)], capsys)
    assert code == 2 and "give the model to export once" in err


def test_working_resolution_keeps_the_photo_where_nothing_is_removed():
    """Above the working resolution only the correction is upsampled: a model that removes nothing
    (a fresh burst model is the identity: its residual head starts at zero) returns the full-size
    reference unchanged, and a frame moved beyond the motion range is pre-aligned."""
    from dereflect.runtime.backends.torch_backend import TorchBackend

    frames = _sequence(12, size=200)
    big = [np.asarray(Image.fromarray(f).resize((400, 400), Image.Resampling.BICUBIC)) for f in frames]
    big[0] = np.roll(big[0], 40, axis=1)  # far beyond 5.5 % of the 128-px working side
    burst = frames_mod.from_arrays(big, [Path(f"f{i}.png") for i in range(5)], 2)
    model = pipeline.BurstModel(TorchBackend(create_model("burst-base").eval()), 5, "fresh")
    out = pipeline.remove(burst, model, side=128)
    assert out.work_hw == (128, 128) and out.clean.shape == big[2].shape
    assert np.array_equal(out.clean, big[2])
    assert any(n.startswith("f0.png pre-aligned by (") for n in out.notes)
