"""Latency of a call: warm-up, then runs until `runs` are done or the time cap is hit.

Why a cap: at 1024 px on a phone-class CPU ten runs of an fp32 model can take a minute; the cap
keeps a whole-folder benchmark bounded while `min_runs` keeps the median meaningful. p90 is the
nearest-rank percentile (the browser demo's ledger rows use the same rule).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.9 * len(ordered)) - 1))]


@dataclass
class Timing:
    """Per-run latencies (ms) after warm-up."""

    runs_ms: list[float] = field(default_factory=list)
    warmup: int = 0
    capped: bool = False  # stopped by the time cap before `runs`

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms)

    @property
    def p90_ms(self) -> float:
        return p90(self.runs_ms)


def time_call(fn: Callable[[], Any], *, runs: int = 10, warmup: int = 2, time_cap_s: float = 10.0, min_runs: int = 3) -> Timing:
    """Call `fn` `warmup` times untimed, then up to `runs` times timed (at least `min_runs`,
    then stopping once the timed runs have taken `time_cap_s`)."""
    for _ in range(warmup):
        fn()
    result = Timing(warmup=warmup)
    spent = 0.0
    for i in range(max(runs, 1)):
        if i >= min_runs and spent >= time_cap_s:
            result.capped = True
            break
        started = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - started
        spent += elapsed
        result.runs_ms.append(elapsed * 1000.0)
    return result
