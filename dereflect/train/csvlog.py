"""The training logs (train.csv, val.csv): append-only, and consistent with a resumed run."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from dereflect.files import write_failed, write_text_atomic


class CsvLog:
    """Append-only CSV whose rows beyond a resumed step are dropped (so a resumed log has no repeats)."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            # rows are logged after their step; a row cut short by a kill mid-append is dropped
            rows = [r for r in rows if None not in r.values() and _step_of(r) is not None and _step_of(r) <= start_step]
            if rows:
                self.fields = list(rows[0].keys())
            buf = io.StringIO()
            if self.fields:
                w = csv.DictWriter(buf, self.fields)
                w.writeheader()
                w.writerows(rows)
            write_text_atomic(path, buf.getvalue(), "log")  # a kill during the rewrite keeps the old log

    def write(self, row: dict[str, Any]) -> None:
        try:
            if self.fields is None:
                self.fields = list(row.keys())
                with self.path.open("w", newline="") as fh:
                    csv.DictWriter(fh, self.fields).writeheader()
            elif any(k not in self.fields for k in row):
                self._widen([k for k in row if k not in self.fields])
            buf = io.StringIO()
            csv.DictWriter(buf, self.fields, extrasaction="ignore").writerow(row)
            with self.path.open("a", newline="") as fh:
                fh.write(buf.getvalue())  # one write call: a kill leaves a whole row or none (almost always)
        except OSError as exc:
            raise write_failed(self.path, "log", exc) from None

    def _widen(self, new: list[str]) -> None:
        """A term that first appears after the header was written (L_T is only on synthetic steps, so a
        run whose first logged step is a real pair): rewrite the log with the new columns, earlier rows
        empty there. Rare, small, atomic."""
        with self.path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        self.fields = [*(self.fields or []), *new]
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.fields, restval="")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(self.path, buf.getvalue(), "log")


def _step_of(row: dict[str, Any]) -> int | None:
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None
