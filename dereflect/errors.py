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


class NotLandedError(UsageError):
    """A stage of the pipeline that is not built yet: say so, never fake output."""

    def __init__(self, what: str, issue: str) -> None:
        super().__init__(None, f"{what} is not available yet: {issue} has not landed")
