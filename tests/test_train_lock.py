"""Two runs never share a run folder: the second `dereflect train` into a folder in use is refused
with one line, and a killed run leaves no stale lock (real processes, real SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dereflect.errors import DereflectError
from dereflect.train.runlock import LOCK_NAME, RunFolderLock

TINY_TEACHER = dict(widths=[8, 8, 16, 16], blocks=[0, 0, 1], dyn_channels=[8, 8, 16], flow_radius=[1, 1, 2])


def _config(path: Path, steps: int) -> Path:
    values = dict(
        stage="teacher",
        model="teacher-small",
        model_overrides=TINY_TEACHER,
        steps=steps,
        batch=1,
        size=32,
        frames=3,
        val_samples=1,
        val_every=10_000,
        ckpt_every=10_000,
        log_every=1,
        perceptual="off",
        warmup=1,
        max_photo_side=64,
        workers=0,
    )
    path.write_text(json.dumps(values))
    return path


def _train(config: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dereflect", "train", "teacher", "--config", str(config), "--out", str(run), "--device", "cpu", *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, DEREFLECT_GIT_COMMIT="lock-test", PYTHONUNBUFFERED="1")


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "timed out waiting for the first run to start training"
        time.sleep(0.2)


def test_second_run_into_a_busy_folder_is_refused_and_a_killed_run_leaves_no_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = subprocess.Popen(
        _train(_config(tmp_path / "long.yaml", 100_000), run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: (run / "train.csv").is_file(), 240, first)  # it is training, lock held
        second = subprocess.run(_train(_config(tmp_path / "short.yaml", 1), run), env=_env(), capture_output=True, text=True, timeout=240)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert lines == [
            f"error: {run}: another `dereflect train` (pid {first.pid}) is using this run folder; wait for it to end, or use a new --out"
        ], second.stderr
        assert first.poll() is None  # the first run is untouched and still training
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert (run / LOCK_NAME).is_file()  # a killed run cannot remove it, but the kernel dropped the lock
    lock = RunFolderLock(run)
    lock.acquire()
    lock.release()
    assert not (run / LOCK_NAME).exists() and run.is_dir()  # the run's files stay


def test_lock_between_processes(tmp_path: Path) -> None:
    """The lock itself, held by another process: refused with that process's pid, free once it exits."""
    run = tmp_path / "run"
    code = (
        "import sys, time; from dereflect.train.runlock import RunFolderLock; "
        f"RunFolderLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DereflectError, match=rf"another `dereflect train` \(pid {holder.pid}\) is using this run folder"):
            RunFolderLock(run).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    lock = RunFolderLock(run)
    lock.acquire()
    assert lock.held and (run / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()
    assert not lock.held and not (run / LOCK_NAME).exists()
    fresh = RunFolderLock(tmp_path / "fresh")
    fresh.acquire()
    fresh.release()
    assert not (tmp_path / "fresh").exists()  # a folder only the lock made goes with it (a refused start leaves nothing)
