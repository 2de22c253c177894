"""Students side by side at 512x512: latency of exported artifacts on this CPU, interleaved run by run.

Issue 13's real-time budget is INT8 <= 15 ms per 512x512 on this CPU's best backend. Timing two
students in separate runs on a shared 2-core machine compares the machine's moods, not the models;
here every artifact is loaded once and the runs alternate, so a busy moment slows them alike. The
artifacts run through dereflect.runtime (the backend `dereflect remove` would use for each), one
512x512 tile, after warm-up; medians and the ratio to the first artifact.

    .venv/bin/python speed/bench_students_512.py dereflect/weights/student-nano-artifacts/student-nano-int8_openvino \\
        /tmp/rt/student-mnv2-rt-int8_openvino --runs 30 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.runtime import load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path, help="exported artifacts (files or OpenVINO folders) with their manifests")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sessions = [load(a) for a in args.artifacts]
    x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    for s in sessions:  # warm-up: first-inference compilation and caches
        for _ in range(3):
            s.impl.infer(x)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(args.runs):
        for k, s in enumerate(sessions):
            t = time.perf_counter()
            s.impl.infer(x)
            times[k].append((time.perf_counter() - t) * 1e3)
    load_avg = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load_avg}; {args.size}x{args.size}, median of {args.runs}"
    )
    rows = []
    base = statistics.median(times[0])
    for path, s, ts in zip(args.artifacts, sessions, times):
        med = statistics.median(ts)
        rows.append({"artifact": str(path), "backend": s.impl.label, "median_ms": round(med, 2), "ratio": round(med / base, 3)})
        print(f"  {path.name:40s} {s.impl.label:18s} {med:7.2f} ms  x{med / base:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "runs": args.runs, "load_average": load_avg, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
