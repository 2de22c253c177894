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

from dereflect.bench.ledger import LEDGER_SCHEMA, load_ledger, merge_rows, summarize
from dereflect.bench.runner import BenchOptions, BenchResult, bench_folder, run_bench

__all__ = ["LEDGER_SCHEMA", "BenchOptions", "BenchResult", "bench_folder", "load_ledger", "merge_rows", "run_bench", "summarize"]
