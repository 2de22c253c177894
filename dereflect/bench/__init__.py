"""`dereflect bench`: which artifact to ship to which device, and what it costs in quality.

Modules: machine (a stable description of this machine, RSS and peak-RSS probes), timing
(warm-up, then median/p90 over runs under a time cap), quality (pairs, the PyTorch fp32
reference, per-target scores and the parity verdict against the export stage's budgets),
runner (artifacts x backends -> ledger rows), ledger (the row format, merging ledgers from
several machines, INT8-vs-fp32 speed-ups, what to ship), exporting (a checkpoint -> every format
and precision this machine builds), report (self-contained HTML with inline SVG).
"""

from dereflect.bench.ledger import LEDGER_SCHEMA, load_ledger, merge_rows, summarize
from dereflect.bench.runner import BenchOptions, BenchResult, run_bench

__all__ = ["LEDGER_SCHEMA", "BenchOptions", "BenchResult", "load_ledger", "merge_rows", "run_bench", "summarize"]
