"""One run per run folder: an exclusive OS lock on `RUN/.lock`, held for the run's life.

Why: two `dereflect train` commands with the same --out would both train and both write
state.pt, the logs and the checkpoints, each overwriting the other's. Why flock: the kernel
drops the lock when the process ends, however it ends (kill -9 included), so a killed run never
leaves a stale lock that a person must delete before `--resume`.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dereflect.errors import DereflectError, os_reason

LOCK_NAME = ".lock"


class RunFolderLock:
    """`acquire()` takes the lock or raises one DereflectError naming the run holding it; `release()` frees it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.created_dir = False

    def acquire(self) -> None:
        self.created_dir = not self.run_dir.exists()
        while True:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise DereflectError(self.run_dir, f"cannot create the run folder ({os_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise DereflectError(
                    self.run_dir,
                    f"another `dereflect train` (pid {holder}) is using this run folder; wait for it to end, or use a new --out",
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the one now there
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file (while still holding the lock, so no one can lock the old file
        meanwhile) and a run folder this lock created that stayed empty, then drop the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        self.path.unlink(missing_ok=True)
        if self.created_dir:
            try:
                self.run_dir.rmdir()  # only when empty: a refused start leaves nothing behind
            except OSError:
                pass
        os.close(fd)  # closing the descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None
