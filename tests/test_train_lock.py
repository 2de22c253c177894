"""Two runs never share a run folder: the second `dereflect train` into a folder in use is refused
with one line, and a killed run leaves no stale lock (real processes, real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import _harness

from dereflect.errors import DereflectError
from dereflect.train.runlock import LOCK_NAME, RunFolderLock

KILL_RESUME = _harness()  # tools/kill_resume.py: its tiny CPU config and its `dereflect train` command line


def _train(tmp_path: Path, run: Path, steps: int) -> list[str]:
    config = KILL_RESUME.write_config(tmp_path / f"teacher-{steps}.yaml", "teacher", steps, ckpt_every=10_000, val_every=10_000)
    return KILL_RESUME.train_command("teacher", config, run, 0, False, None)


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "timed out waiting for the first run to start training"
        time.sleep(0.2)


def test_second_run_into_a_busy_folder_is_refused_and_a_killed_run_leaves_no_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = subprocess.Popen(
        _train(tmp_path, run, 100_000), env=KILL_RESUME._env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: (run / "train.csv").is_file(), 240, first)  # it is training, lock held
        second = subprocess.run(_train(tmp_path, run, 1), env=KILL_RESUME._env(), capture_output=True, text=True, timeout=240)
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
