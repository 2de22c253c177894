"""`dereflect bench`: which artifact to ship to which device, and what it costs in quality.

Modules: machine (a stable description of this machine, RSS and peak-RSS probes), timing
(warm-up, then median/p90 over runs under a time cap), quality (pairs, the PyTorch fp32
reference, per-target scores and the parity verdict against the export stage's budgets),
runner (artifacts x backends -> ledger rows; `bench_folder` adds the merged ledgers, the JSON
and the report), ledger (the row format, merging ledgers from several machines, INT8-vs-fp32
speed-ups, what to ship, the browser's rows), report (self-contained HTML with inline SVG), table
(the console table), cli (`dereflect bench`). A checkpoint is exported first by
dereflect.export.pipeline.export_all.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The package's API, imported on first use (PEP 562): `dereflect --help` and `dereflect remove`
#: import bench.cli to register the command, and should not pay for the runner and its imports.
_API = {
    "LEDGER_SCHEMA": "ledger",
    "load_ledger": "ledger",
    "merge_rows": "ledger",
    "summarize": "ledger",
    "BenchOptions": "runner",
    "BenchResult": "runner",
    "bench_folder": "runner",
    "run_bench": "runner",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"dereflect.bench.{_API[name]}"), name)
    raise AttributeError(f"module 'dereflect.bench' has no attribute {name!r}")


__all__ = ["LEDGER_SCHEMA", "BenchOptions", "BenchResult", "bench_folder", "load_ledger", "merge_rows", "run_bench", "summarize"]
