"""Writing files so that a crash, a kill or a full disk never leaves a half-written one.

Every output of the project (images, checkpoints, training state, logs, JSON, reports) is written
through here: a temporary file in the target folder, fsync, then os.replace. Readers, and a run
killed mid-write, see the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

from dereflect.errors import DereflectError, os_reason

PathLike = Union[str, "os.PathLike[str]"]


def new_file_mode(fd: int) -> None:
    """Give a temp file the mode a new file gets here (0666 & ~umask): mkstemp makes it 0600 and
    os.replace would keep that, leaving outputs unreadable to the user's other tools."""
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`, on any
    failure remove it. A reader (or a run killed mid-write) never sees a half-written file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    new_file_mode(fd)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: PathLike, option: str) -> None:
    """Refuse an output file path up front (before minutes of work): it must not be a folder and
    must lie in a folder that exists (or can be made) and is writable."""
    path = Path(path)
    if path.is_dir():
        raise DereflectError(path, f"{option} names a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DereflectError(path, f"cannot write here: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise DereflectError(path, f"cannot write here: folder {parent} is not writable")


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write data to path atomically (temp file in the same folder + os.replace): JSON, reports."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_failed(path: Path, what: str, exc: OSError) -> DereflectError:
    """One line for a write that failed (disk full, folder gone, no permission); the atomic writers
    guarantee the file that was there before is unchanged, so the message can say so."""
    return DereflectError(path, f"could not write the {what} ({os_reason(exc)}); the previous file, if any, is unchanged")


def write_text_atomic(path: Path, text: str, what: str) -> None:
    """write_bytes_atomic for text, with a full disk or a vanished folder as one `write_failed` line."""
    try:
        write_bytes_atomic(path, text.encode())
    except OSError as exc:
        raise write_failed(path, what, exc) from None


def atomic_torch_save(obj: Any, path: Path, what: str = "training state") -> None:
    """torch.save, atomically. Serialised in memory first: torch's own file writer reports a full
    disk as a cryptic 'unexpected pos' RuntimeError, a plain file write reports ENOSPC by name."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    try:
        with atomic_output(path) as tmp:
            tmp.write_bytes(buf.getbuffer())
    except OSError as exc:
        raise write_failed(path, what, exc) from None
