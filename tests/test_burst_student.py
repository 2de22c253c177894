"""The phone-sized burst model (burst-mnv2, models/burst_student.py): how it starts, what registration
feeds it, and its export with the alignment contract in the manifest.

Sequences come from the repository's synthesis (scikit-image's photos), as in test_burst.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dereflect.burst import frames as frames_mod
from dereflect.burst import pipeline
from dereflect.data.photos import skimage_photos
from dereflect.data.synth import SynthConfig, synthesize_sequence
from dereflect.errors import DereflectError
from dereflect.images import from_float, to_float
from dereflect.models import create_model, load_checkpoint, save_checkpoint
from dereflect.models.burst_student import widen_state
from dereflect.runtime.backends.torch_backend import TorchBackend

SHIPPED_RT = Path(pipeline.weights_dir()) / "student-mnv2-rt.safetensors"


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight nudged (the cue inputs included), so no path hides behind a zero init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def test_starts_as_the_student_it_is_built_from():
    """init_from: the shipped student-mnv2-rt's weights, the cue inputs at zero -> the same output as
    that student on the middle frame, whatever the other frames hold."""
    student = load_checkpoint(SHIPPED_RT)
    burst = create_model("burst-mnv2").eval()
    burst.init_from(student)
    frames = torch.rand(2, 5, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(burst(frames), student(frames[:, 2]))
    with pytest.raises(ValueError, match="single-image MobileNetV2 student"):
        burst.init_from(create_model("student-nano"))


def test_a_static_burst_is_the_single_image_path():
    """Five equal frames give zero cues: even with trained (here: random) cue weights the burst model
    equals its own network run as a single-image student."""
    burst = _randomised(create_model("burst-mnv2"), 0)
    single = create_model("student-mnv2-rt").eval()
    single.load_state_dict(
        {k: v[:, :3] if k in ("encoder.features.0.0.weight", "stem.0.weight") else v for k, v in burst.state_dict().items()}
    )
    photo = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        a = burst(photo[:, None].expand(-1, 5, -1, -1, -1))
        b = single(photo)
        moving = torch.stack([torch.roll(photo, k, dims=3) for k in (-2, -1, 0, 1, 2)], 1)
        c = burst(moving)
    assert torch.allclose(a, b, atol=1e-6)
    assert (c - b).abs().max() > 1e-3  # moving frames do change the result once the cue weights are trained


def test_widen_state_names_what_does_not_fit():
    target = create_model("burst-mnv2").state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        widen_state(create_model("student-mnv2-hq").state_dict(), target)


def test_register_frames_moves_each_frame_onto_the_reference():
    pool = skimage_photos()
    base = to_float(pool[0][100:228, 100:228])
    frames = np.stack([np.roll(base, (dy, dx), axis=(0, 1)) for dx, dy in ((-4, 2), (-2, 0), (0, 0), (3, -1), (5, 3))])
    aligned = pipeline.register_frames(frames, 2)
    inner = (slice(8, -8), slice(8, -8))
    for k in range(5):
        assert np.abs(aligned[k][inner] - base[inner]).max() < 1e-6, k
    # A frame of another scene does not register: it is replaced by the reference, never left misaligned.
    other = to_float(pool[4][:128, :128])
    mixed = pipeline.register_frames(np.stack([other, frames[1], base, frames[3], frames[4]]), 2)
    assert np.array_equal(mixed[0], base)


def test_remove_burst_registers_frames_for_a_registered_model():
    """pipeline.remove on a burst-mnv2: frames moved by whole pixels reach the model aligned, so the
    result equals the model on the reference repeated five times (zero cues) inside the frame."""
    pool = skimage_photos()
    seq = synthesize_sequence(pool[2], pool[3], n_frames=3, size=128, rng=np.random.default_rng(5), config=SynthConfig())
    ref = from_float(seq.frames[1])
    shifts = ((-3, 1), (-1, 2), (0, 0), (2, -2), (4, 1))
    frames = [np.roll(ref, (dy, dx), axis=(0, 1)) for dx, dy in shifts]
    burst = frames_mod.from_arrays(frames, [Path(f"f{i}.png") for i in range(5)], 2)
    net = _randomised(create_model("burst-mnv2"), 1)
    model = pipeline.BurstModel(TorchBackend(net), 5, "random burst-mnv2", registered=True)
    out = pipeline.remove(burst, model)
    assert any("registered to the reference" in n for n in out.notes)
    x = torch.from_numpy(np.ascontiguousarray(ref.transpose(2, 0, 1)))[None, None].float().div(255).expand(-1, 5, -1, -1, -1)
    with torch.no_grad():
        static = from_float(net(x)[0].permute(1, 2, 0).numpy())
    inner = (slice(12, -12), slice(12, -12))
    assert np.abs(out.clean[inner].astype(int) - static[inner].astype(int)).max() <= 1


def test_init_from_another_kind_is_one_clear_error(tmp_path):
    from dereflect.train.config import config_from_dict
    from dereflect.train.student import StudentTrainer

    nano = save_checkpoint(create_model("student-nano"), tmp_path / "nano.safetensors")
    cfg = config_from_dict({"stage": "student", "model": "burst-mnv2", "init": str(nano), "steps": 1, "batch": 1, "size": 64})
    trainer = StudentTrainer.__new__(StudentTrainer)
    trainer.cfg, trainer._model = cfg, create_model("burst-mnv2")
    with pytest.raises(DereflectError, match="cannot start burst-mnv2 from student-nano"):
        trainer._init_weights(nano)


@pytest.mark.slow
def test_export_records_alignment_and_passes_parity(tmp_path):
    """ONNX export of burst-mnv2: (N,5,3,H,W) in, no GridSample, parity on registered sequences, and
    `constraints.frame_alignment` = "translation", which makes the runtime register the frames."""
    from dereflect.export.formats import FORMATS_BY_NAME
    from dereflect.export.pipeline import Exporter, ExportOptions

    ckpt = save_checkpoint(_randomised(create_model("burst-mnv2"), 2), tmp_path / "burst-mnv2.safetensors")
    opts = ExportOptions(size=64, val_count=3)
    (res,) = Exporter(ckpt, tmp_path / "art", opts, log=lambda _: None).run([FORMATS_BY_NAME["onnx"]])
    assert res.status == "passed", res.message or res.parity
    manifest = json.loads(res.manifest.read_text())
    assert manifest["inputs"][0]["shape"] == ["batch", 5, 3, "height", "width"]
    assert manifest["constraints"]["frame_alignment"] == "translation"
    assert manifest["graph"]["ops"].get("GridSample", 0) == 0 and manifest["graph"]["ops"].get("ReduceMin", 0) == 1
    assert manifest["parity"]["metrics"]["max_abs_diff"] <= 1e-4
    on_ort = pipeline.load_model(str(res.artifact))
    assert on_ort.registered and on_ort.backend == "onnxruntime"


def test_default_burst_cli_runs_the_shipped_burst_mnv2(tmp_path, capsys):
    """`dereflect remove --burst` with no --model runs the shipped burst-mnv2 on registered frames: its
    output is the network's on the frames moved onto the reference (pipeline.model_input, align "full")."""
    from conftest import run_cli
    from PIL import Image

    if pipeline.default_burst() != "burst-mnv2":
        pytest.skip("burst-mnv2 is not shipped in dereflect/weights")
    pool = skimage_photos()
    seq = synthesize_sequence(pool[0], pool[1], n_frames=5, size=96, rng=np.random.default_rng(3))
    frames = [from_float(f) for f in seq.frames]
    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(f).save(paths[-1])
    code, stdout, err = run_cli(["remove", "--burst", *map(str, paths), "-o", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert "burst-mnv2" in stdout and "registered to the reference" in stdout
    net = load_checkpoint(Path(pipeline.weights_dir()) / "burst-mnv2.safetensors")
    burst = frames_mod.from_arrays(frames, [Path(p.name) for p in paths], 2)
    x, (h, w), _ = pipeline.model_input(burst, 5, multiple=16, align="full")
    with torch.no_grad():
        want = from_float(net(torch.from_numpy(x))[0, :, :h, :w].permute(1, 2, 0).numpy())
    got = np.asarray(Image.open(tmp_path / "out" / "f2.png"))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - frames[2].astype(int)).mean() > 0.5  # it removed something


def test_residual_warp_moves_pixels_by_about_the_asked_amount():
    """Training's residual misalignment: a ramp image tells each pixel's displacement; with px = 2 the
    frames move by about a pixel on average and never by more than 2.5 x px (inside a 5-px border),
    deterministically for one generator state."""
    from dereflect.train.data import residual_warp

    size = 96
    ramp = (torch.arange(size, dtype=torch.float32) / (size - 1)).view(1, 1, 1, size).expand(2, 3, size, size).contiguous()
    moved = [(residual_warp(ramp, 2.0, np.random.default_rng(s)) - ramp) * (size - 1) for s in range(3)]
    for d in moved:
        inner = d[:, 0, 5:-5, 5:-5].abs()
        assert 0.1 < float(inner.mean()) < 2.0 and float(inner.max()) < 2.5 * 2.0
    again = (residual_warp(ramp, 2.0, np.random.default_rng(0)) - ramp) * (size - 1)
    assert torch.equal(again, moved[0])


@pytest.mark.slow
def test_burst_bench_rows_merge_into_the_ledger_and_report(tmp_path):
    """speed/bench_burst.py writes benchmark-ledger rows (parity verdict as status, latency, quality on
    synthesised sequences) that the ledger loader takes and the HTML report shows beside any others."""
    import subprocess
    import sys

    from dereflect.bench.ledger import ledger_document, load_ledger
    from dereflect.bench.report import render_report
    from dereflect.export.formats import FORMATS_BY_NAME
    from dereflect.export.pipeline import Exporter, ExportOptions

    ckpt = save_checkpoint(_randomised(create_model("burst-mnv2"), 3), tmp_path / "burst-mnv2.safetensors")
    Exporter(ckpt, tmp_path / "art", ExportOptions(size=64, val_count=2), log=lambda _: None).run([FORMATS_BY_NAME["onnx"]])
    script = Path(__file__).resolve().parents[1] / "speed" / "bench_burst.py"
    args = ["--artifacts", str(tmp_path / "art"), "--model", str(ckpt), "--runs", "1", "--warmup", "0", "--quality", "2"]
    done = subprocess.run([sys.executable, str(script), *args, "--json", str(tmp_path / "ledger.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = load_ledger(tmp_path / "ledger.json")
    onnx = [r for r in rows if r["format"] == "onnx" and r["backend"] == "onnxruntime"]
    assert {r["size"] for r in onnx} == {512, 1024} and all(r["status"] == "passed" and r["frames"] == 5 for r in onnx)
    reference = {r["size"]: r for r in rows if r["status"] == "reference"}
    for r in onnx:
        assert r["latency_ms"] > 0 and r["model"] == "burst-mnv2"
        assert abs(r["ssim"] - reference[r["size"]]["ssim"]) < 1e-3 and r["ref_ssim"] == reference[r["size"]]["ssim"]
    html = render_report(ledger_document(rows))
    assert "burst-mnv2" in html and "onnxruntime" in html


def test_the_student_stage_trains_the_burst_student_and_only_stages_train_their_models():
    """Which stage trains a preset follows its class (registry.training_stage), not its name."""
    from dereflect.train.config import load_config

    assert load_config("student", None, {"model": "burst-mnv2"}).model == "burst-mnv2"
    with pytest.raises(DereflectError, match="model 'burst-mnv2' is not a teacher"):
        load_config("teacher", None, {"model": "burst-mnv2"})
    with pytest.raises(DereflectError, match="model 'burst-base' is not a student"):
        load_config("student", None, {"model": "burst-base"})
    with pytest.raises(DereflectError, match="unknown model 'student-huge'; choose one of"):
        load_config("student", None, {"model": "student-huge"})
