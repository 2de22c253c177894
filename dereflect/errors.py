"""One error type for everything a user can get wrong.

The CLI turns a DereflectError into a single line `error: <file>: <what is wrong>` and a
non-zero exit, so bad input never shows a traceback. Library code raises it with the path
it was working on; callers that loop over many files catch it, report, and carry on.
"""

from __future__ import annotations

from os import PathLike


class DereflectError(Exception):
    """Bad input or a failed step, described for a person. Exit status 1."""

    exit_code = 1

    def __init__(self, path: str | PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        return self.problem if self.path is None else f"{self.path}: {self.problem}"


class UsageError(DereflectError):
    """Bad combination of options (e.g. a precision the format cannot do). Exit status 2."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (runtimes and parsers put whole reports in theirs;
    our errors are one line), or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def os_reason(exc: OSError) -> str:
    """What an OSError says went wrong, without the path we already print ("No space left on device")."""
    return exc.strerror or str(exc)
