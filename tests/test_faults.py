"""Faults a long run meets: SIGKILL at any moment (also mid-checkpoint-write) and a full disk.

The kill test is a short run of tools/kill_resume.py (the full one is `make kill-resume`): the
real `dereflect train teacher` in a subprocess, killed while state.pt / last.safetensors are
being written and while a resume rewrites its log, must leave only whole files and resume to
the uninterrupted run's weights bit for bit. Disk-full tests use a real tiny tmpfs where this
process may mount one (root), else make the OS call fail with ENOSPC at the os boundary; either
way the user gets one line naming the file and the previous checkpoint or output survives.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from dereflect.errors import DereflectError
from dereflect.models import create_model, load_checkpoint, save_checkpoint
from dereflect.train.config import load_config
from dereflect.train.teacher import TeacherTrainer

REPO = Path(__file__).resolve().parents[1]
ENOSPC_TEXT = os.strerror(errno.ENOSPC)


def _harness():
    spec = importlib.util.spec_from_file_location("kill_resume", REPO / "tools" / "kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_resume"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a folder on a tmpfs of that size (skips where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def tiny_trainer(run: Path, **extra) -> TeacherTrainer:
    kr = _harness()
    values = dict(
        model="teacher-small",
        model_overrides=kr.TINY_TEACHER,
        steps=2,
        batch=2,
        size=32,
        frames=3,
        val_samples=2,
        val_every=100,
        ckpt_every=1,
        log_every=1,
        perceptual="off",
        warmup=1,
        max_photo_side=96,
    )
    values.update(extra)
    return TeacherTrainer(load_config("teacher", None, values), run, device="cpu", progress=False)


# ------------------------------------------------------------------------------------- kills


def test_killed_during_checkpoint_writes_resumes_bit_exactly(tmp_path):
    kr = _harness()
    plan = [
        kr.Kill("write", target="state.pt", nth=2),  # fresh run: dies writing step 2's state
        kr.Kill("write", target="last.safetensors", nth=2),
    ]  # resumed at 1: dies writing step 3's weights
    summary = kr.harness(tmp_path, "teacher", steps=4, seed=1, plan=plan, say=lambda _: None)
    assert summary.problems == [] and summary.equal, "\n".join(summary.lines())
    assert summary.kills == 2 and summary.resumes == 2 and summary.fresh_starts == 1
    assert summary.kills_during_write >= 1, summary.lines()  # the temp file was still there when it died
    assert summary.integrity_checks == 2


def test_check_folder_finds_a_half_written_checkpoint(tmp_path):
    """The harness' integrity check is not vacuous: a truncated state.pt or checkpoint is caught."""
    kr = _harness()
    path = save_checkpoint(create_model("student-nano"), tmp_path / "last.safetensors")
    torch.save({"step": 1, "modules": {}, "optims": {}}, tmp_path / "state.pt")
    assert kr.check_folder(tmp_path) == []
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    (tmp_path / "state.pt").write_bytes((tmp_path / "state.pt").read_bytes()[:100])
    (tmp_path / "last.json").write_text('{"model": "stud')
    found = kr.check_folder(tmp_path)
    assert [p.split(":")[0] for p in found] == ["half-written state.pt", "half-written last.safetensors", "half-written last.json"]


# ------------------------------------------------------------------------------------- full disk


def _assert_step_one_intact(run: Path) -> None:
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 1
    assert json.loads((run / "last.json").read_text())["step"] == 1
    load_checkpoint(run / "last.safetensors")  # whole, loads strictly
    assert not list(run.glob(".*.tmp")), list(run.glob(".*.tmp"))


def test_checkpoint_on_full_disk_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    """ENOSPC from the OS while renaming the new state into place (portable: no mount needed)."""
    trainer = tiny_trainer(tmp_path / "run")
    trainer.save(1)
    real_replace = os.replace

    def full(src, dst, *a, **k):
        if Path(dst).name == "state.pt":
            raise OSError(errno.ENOSPC, ENOSPC_TEXT, str(src))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DereflectError) as err:
        trainer.save(2)
    assert str(err.value) == (
        f"{tmp_path / 'run' / 'state.pt'}: could not write the training state ({ENOSPC_TEXT}); the previous file, if any, is unchanged"
    )
    monkeypatch.setattr(os, "replace", real_replace)
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_training_on_a_real_full_disk(tmpfs, tmp_path, capsys):
    """A real ENOSPC (torch's own writer would say 'unexpected pos'): one line, exit 1, the step-1
    checkpoint intact, and after space is freed `--resume` finishes the run."""
    kr = _harness()
    disk = tmpfs("3m")  # one checkpoint (~2.8 MB with temp copies) fits, the second does not
    config = kr.write_config(tmp_path / "t.yaml", "teacher", steps=3, val_every=100)
    run = disk / "run"
    argv = ["train", "teacher", "--config", str(config), "--out", str(run), "--device", "cpu"]
    code, _, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].endswith(f"({ENOSPC_TEXT}); the previous file, if any, is unchanged"), err
    _assert_step_one_intact(run)
    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
    code, _, err = run_cli(argv + ["--resume"], capsys)
    assert code == 0, err
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 3


def test_remove_output_on_full_disk(tmpfs, tmp_path, capsys):
    disk = tmpfs("64k")
    src = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(src)
    small = tmp_path / "small.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(small)
    code, out, err = run_cli(["remove", str(small), str(src), "-o", str(disk / "o")], capsys)
    assert code == 1 and "Traceback" not in err
    assert f"error: {disk / 'o' / 'noise.png'}: could not write the image ([Errno 28] {ENOSPC_TEXT})" in err.splitlines()
    assert sorted(p.name for p in (disk / "o").iterdir()) == ["small.png"]  # whole or nothing; no temp file
    assert "1 image(s) written" in out and "1 failed" in out


def test_export_on_full_disk_leaves_no_truncated_artifact(tmpfs, tmp_path, capsys):
    """The artifact is copied into --out atomically: a full disk leaves no 0-byte .onnx behind."""
    import warnings

    from dereflect.export.formats import FORMATS_BY_NAME
    from dereflect.export.pipeline import Exporter, ExportOptions
    from dereflect.models.reference import reference_student

    student = reference_student("student-nano", seed=1)
    ckpt = save_checkpoint(student, tmp_path / "nano.safetensors")
    base = tmp_path / "base.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            student.eval(),
            torch.rand(1, 3, 32, 32),
            str(base),
            dynamo=False,
            input_names=["input"],
            output_names=["transmission"],
            opset_version=17,
            dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "transmission": {0: "batch", 2: "height", 3: "width"}},
        )
    disk = tmpfs("256k")  # the fp32 student is ~1.2 MB
    results = Exporter(
        ckpt, disk / "art", ExportOptions(precision="fp32", size=32, val_count=2), log=lambda _: None, model=student, base_onnx=base
    ).run([FORMATS_BY_NAME["onnx"]])
    assert [r.status for r in results] == ["error"]
    assert results[0].message == f"{disk / 'art' / 'student-nano-fp32.onnx'}: could not write the artifact ({ENOSPC_TEXT})"
    assert list((disk / "art").iterdir()) == []


def test_synth_on_full_disk_leaves_no_half_sequence(tmpfs, capsys):
    disk = tmpfs("1m")  # a 64 px 3-frame sequence (8-bit frames, 16-bit layers, flows) is ~0.4 MB
    code, _, err = run_cli(["data", "synth", "--out", str(disk / "s"), "--sequences", "6", "--size", "64", "--frames", "3"], capsys)
    assert code == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert re.fullmatch(rf"error: {re.escape(str(disk / 's'))}/seq_0000[1-5]: could not write the sequence \(.*{ENOSPC_TEXT}.*\)", line), (
        err
    )
    written = sorted((disk / "s").iterdir())
    assert written and all(not seq.name.startswith(".") for seq in written)  # no hidden temp folder left
    for seq in written:  # only whole sequences
        assert len(list(seq.glob("frame_*.png"))) == 3 and (seq / "params.json").is_file() and (seq / "flow_R.npy").is_file()


def test_unforeseen_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """The CLI's last guard: an OSError no stage caught still becomes `error: <file>: <reason>`."""
    import dereflect.evaluate as evaluate

    def broken(*_a, **_k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "pairs"))

    monkeypatch.setattr(evaluate, "find_pairs", broken)
    code, _, err = run_cli(["eval", "identity", "--pairs", str(tmp_path / "pairs")], capsys)
    assert code == 1 and err == f"error: {tmp_path / 'pairs'}: {os.strerror(errno.EACCES)}\n"
