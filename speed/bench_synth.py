"""Time multi-view synthesis: one 5-frame 256x256 sequence, and a full dataset item.

Why: the teacher synthesises its sequences on the fly in DataLoader workers, so one sequence must
cost well under 100 ms on this 2-core machine (a 4-sequence batch then stays in the noise of a
training step). Workers run with one torch thread, so that is the default here; --threads 0
keeps torch's default. Prints the machine and the median of N runs.

Usage: .venv/bin/python speed/bench_synth.py [--runs 30] [--size 256] [--frames 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from dereflect.data.datasets import SyntheticSequences
from dereflect.data.photos import load_photos
from dereflect.data.synth import synthesize_sequence


def _time(fn: Callable[[int], object], runs: int) -> list[float]:
    fn(-1)  # warm-up (first call pays for lazy imports and allocator growth)
    out = []
    for k in range(runs):
        t0 = time.perf_counter()
        fn(k)
        out.append(time.perf_counter() - t0)
    return out


def _line(name: str, times: list[float]) -> str:
    return f"{name:34s} {statistics.median(times) * 1e3:7.1f} ms  (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    photos = load_photos(None, max_side=512)
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}), torch {torch.__version__} "
        f"with {torch.get_num_threads()} thread(s), numpy {np.__version__}"
    )
    print(f"{args.frames} frames of {args.size}x{args.size} from scikit-image photos (long side 512), median of {args.runs} runs")

    def one(k: int) -> None:
        rng = np.random.default_rng(k + 1)
        synthesize_sequence(photos[(k + 1) % 5], photos[(k + 3) % 12], n_frames=args.frames, size=args.size, rng=rng)

    print(_line("synthesize_sequence", _time(one, args.runs)))
    ds = SyntheticSequences(photos, n_frames=args.frames, size=args.size, length=args.runs + 1, seed=0)
    print(_line("SyntheticSequences[i] (+jitter, CHW)", _time(lambda k: ds[k + 1], args.runs)))


if __name__ == "__main__":
    main()
