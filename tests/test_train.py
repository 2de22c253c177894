"""Training: a tiny run overfits one batch, kill-and-resume is exact, DDP runs, bad input is refused early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dereflect.cli import app
from dereflect.errors import DereflectError
from dereflect.models import create_model, save_checkpoint
from dereflect.train import losses as L
from dereflect.train.config import load_config
from dereflect.train.csvlog import CsvLog
from dereflect.train.student import StudentTrainer
from dereflect.train.teacher import TeacherTrainer

TINY_TEACHER = dict(widths=[8, 8, 16, 16], blocks=[0, 0, 1], dyn_channels=[8, 8, 16], flow_radius=[1, 1, 2])


def tiny_cfg(stage: str, **extra):
    values = dict(
        steps=4, batch=2, size=32, frames=3, val_samples=2, val_every=2, ckpt_every=2, log_every=1, perceptual="off", warmup=1, lr=1e-3
    )
    if stage == "teacher":
        values.update(model="teacher-small", model_overrides=TINY_TEACHER)
    values.update(extra)
    return load_config(stage, None, values)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = create_model("student-nano")
    x = torch.rand(2, 3, 32, 32)
    target = (x * 0.7 + 0.1).clamp(0, 1)  # a learnable, non-identity mapping
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = L.reconstruction_loss(model(x), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())


class Killed(Exception):
    pass


class DiesAtStep3(TeacherTrainer):
    def train_step(self, batch, step):
        if step == 3:
            raise Killed()
        return super().train_step(batch, step)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    full = TeacherTrainer(tiny_cfg("teacher"), tmp_path / "full", device="cpu", progress=False)
    full.run()
    with pytest.raises(Killed):
        DiesAtStep3(tiny_cfg("teacher"), tmp_path / "killed", device="cpu", progress=False).run()
    resumed = TeacherTrainer(tiny_cfg("teacher"), tmp_path / "killed", device="cpu", progress=False, resume=True)
    assert resumed.start_step == 2
    resumed.run()
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (tmp_path / "killed" / "train.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # no repeated steps after resume
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path):
    TeacherTrainer(tiny_cfg("teacher", steps=2), tmp_path / "r", device="cpu", progress=False).run()
    with pytest.raises(DereflectError, match="already holds a run: pass --resume"):
        TeacherTrainer(tiny_cfg("teacher", steps=2), tmp_path / "r", device="cpu", progress=False)
    with pytest.raises(DereflectError, match="nothing to resume"):
        TeacherTrainer(tiny_cfg("teacher"), tmp_path / "empty", device="cpu", progress=False, resume=True)


def test_student_distils_from_teacher(tmp_path):
    teacher = create_model("teacher-small", **{k: tuple(v) for k, v in TINY_TEACHER.items()}, n_frames=3)
    path = save_checkpoint(teacher, tmp_path / "teacher.safetensors")
    trainer = StudentTrainer(tiny_cfg("student", gan="hinge"), tmp_path / "s", teacher=path, device="cpu", progress=False)
    result = trainer.run()
    rows = (tmp_path / "s" / "train.csv").read_text()
    assert "kt" in rows.splitlines()[0] and "gan_d" in rows.splitlines()[0]
    assert {"synth_ssim", "synth_id_ssim", "synth_lmse"} <= result.keys()
    assert (tmp_path / "s" / "best.safetensors").is_file()


def test_init_from_a_student_trained_without_kt(tmp_path):
    """The equal-start KT ablation: a run with KT may start from a checkpoint trained without it (use_kt
    switches a loss, not a layer), and gets exactly its weights; another architecture is still refused."""
    torch.manual_seed(0)
    nokt = create_model("student-nano", use_kt=False)
    path = save_checkpoint(nokt, tmp_path / "nokt.safetensors")
    trainer = StudentTrainer.__new__(StudentTrainer)
    trainer.cfg, trainer._model = tiny_cfg("student", model="student-nano"), create_model("student-nano")
    trainer._init_weights(path)
    for (name, want), got in zip(nokt.state_dict().items(), trainer._model.state_dict().values()):
        torch.testing.assert_close(got, want, msg=name)
    trainer._model = create_model("student-nano", halluc_blocks=2)
    with pytest.raises(DereflectError, match="not the model being trained"):
        trainer._init_weights(path)


def test_log_gains_a_column_that_first_appears_later(tmp_path):
    """L_T exists on synthetic steps only: a run whose first logged step is a real pair must still log
    it. The header widens (earlier rows empty there), and a resume keeps every row."""
    log = CsvLog(tmp_path / "train.csv", 0)
    log.write({"step": 10, "rec": 0.5, "real": 1.0})
    log.write({"step": 20, "rec": 0.4, "kt": 0.9, "real": 0.0})
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert lines == ["step,rec,real,kt", "10,0.5,1.0,", "20,0.4,0.0,0.9"]
    CsvLog(tmp_path / "train.csv", 20).write({"step": 30, "rec": 0.3, "real": 1.0})
    assert (tmp_path / "train.csv").read_text().splitlines()[1:] == ["10,0.5,1.0,", "20,0.4,0.0,0.9", "30,0.3,1.0,"]


def test_bad_input_is_refused_before_work(tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["train", "teacher", "--data", str(empty), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "no images, pairs" in str(res.exception)
    student = save_checkpoint(create_model("student-nano"), tmp_path / "student.safetensors")
    with pytest.raises(DereflectError, match="expected a teacher checkpoint, got 'student-nano'"):
        StudentTrainer(tiny_cfg("student"), tmp_path / "s", teacher=student, device="cpu", progress=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stpes: 10\n")
    with pytest.raises(DereflectError, match="unknown config key 'stpes'"):
        load_config("teacher", bad)
    bad.write_text("loss: {percep: 1}\n")
    with pytest.raises(DereflectError, match="unknown loss weight 'percep'"):
        load_config("teacher", bad)


def test_ddp_two_cpu_processes(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "model: teacher-small\nsteps: 2\nbatch: 2\nsize: 32\nframes: 3\nval_samples: 1\nval_every: 2\n"
        "ckpt_every: 2\nperceptual: 'off'\nwarmup: 1\nmodel_overrides:\n" + "".join(f"  {k}: {v}\n" for k, v in TINY_TEACHER.items())
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "dereflect",
        "train",
        "teacher",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "ddp"),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = (tmp_path / "ddp" / "last.json").read_text()
    assert '"world_size": 2' in meta and '"step": 2' in meta


def test_teacher_trains_on_written_sequence_folders(tmp_path):
    from dereflect.data.datasets import draw_sequence
    from dereflect.data.photos import load_photos
    from dereflect.data.synth import write_sequence

    photos = load_photos(None, max_side=96)
    for k in range(2):
        write_sequence(draw_sequence(photos, k, seed=5, n_frames=3, size=32), tmp_path / "seqs" / f"s{k}")
    trainer = TeacherTrainer(
        tiny_cfg("teacher", steps=2, sequence_fraction=1.0), tmp_path / "r", data_dirs=[tmp_path / "seqs"], device="cpu", progress=False
    )
    assert [trainer.dataset.source(s) for s in range(4)] == ["sequence"] * 4
    item = trainer.dataset[0]
    assert item["frames"].shape == (3, 3, 32, 32) and item["flow_T"].shape == (3, 2, 32, 32)
    trainer.run()
    assert "sequences: " in trainer.data_description()


def test_students_can_learn_labels_without_the_glass():
    """glass_in_label: False gives synthetic labels shot without the glass, like real pairs' ground truth:
    the photo is then no longer label + reflection (the glass' gain sits between them)."""
    from dereflect.train.data import DataSources
    from dereflect.train.teacher import build_synthetic

    gaps = {}
    for in_label in (True, False):
        cfg = load_config("student", None, {"size": 64, "steps": 4, "batch": 2, "val_samples": 6, "glass_in_label": in_label})
        _, val, _, _ = build_synthetic(cfg, DataSources(), stage_seed=1)
        items = [val[i] for i in range(len(val))]
        gaps[in_label] = float(sum((it["input"] - it["reflection"] - it["transmission"]).abs().mean() for it in items) / len(items))
    assert gaps[True] < 0.02 < gaps[False]


def _pairs_folder(root: Path) -> Path:
    from PIL import Image
    from skimage import data as skdata

    for sub in ("blended", "transmission"):
        (root / sub).mkdir(parents=True)
    for i, name in enumerate(("astronaut", "coffee", "chelsea")):
        clean = getattr(skdata, name)()[:96, :96]
        Image.fromarray(clean).save(root / "transmission" / f"{i}.png")
        Image.fromarray((clean * 0.8 + 40).astype("uint8")).save(root / "blended" / f"{i}.png")
    return root


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_device_synthesis_trains_and_resumes_exactly(tmp_path, stage):
    """synthesis: device makes the synthetic batches on the training device; the student mixes in real
    pairs by StepData's own per-step draw; a resumed run equals an uninterrupted one."""
    teacher = save_checkpoint(
        create_model("teacher-small", **{k: tuple(v) for k, v in TINY_TEACHER.items()}, n_frames=3), tmp_path / "teacher.safetensors"
    )
    data = [_pairs_folder(tmp_path / "pairs")] if stage == "student" else None

    def run(out, steps, resume=False):
        cfg = tiny_cfg(stage, steps=steps, synthesis="device", real_fraction=0.5)
        extra = {} if stage == "teacher" else {"teacher": teacher}
        cls = TeacherTrainer if stage == "teacher" else StudentTrainer
        cls(cfg, out, data_dirs=data, device="cpu", resume=resume, progress=False, **extra).run()
        return load_file(str(out / "last.safetensors"))

    whole = run(tmp_path / "a", 6)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 6, resume=True)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    if stage == "student":  # both sources were drawn: real steps have no frames, synthetic ones do (KT)
        real = [float(r.split(",")[-1]) for r in (tmp_path / "a" / "train.csv").read_text().splitlines()[1:]]
        assert 0.0 in real and 1.0 in real
