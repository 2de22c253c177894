"""Time the literature metrics on a 3000x4000 RGB pair (the size of a phone photo).

Why: evaluation runs every metric on every image of every benchmark; docs/DESIGN.md asks for a 4K pair
to score in well under a second per metric. Prints the machine and the median of N runs.

Usage: .venv/bin/python speed/bench_metrics.py [--runs 5] [--height 3000] [--width 4000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from dereflect import metrics


def _pair(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'photo' and a degraded copy (blend + noise), uint8 HWC."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([127 + 100 * np.sin(xx / 97.0 + k) * np.cos(yy / 131.0 - k) for k in range(3)], axis=-1)
    gt = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    est = np.clip(0.8 * gt + 0.2 * gt[::-1, ::-1] + rng.normal(0, 4, gt.shape), 0, 255).astype(np.uint8)
    return gt, est


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    args = parser.parse_args()
    gt, est = _pair(args.height, args.width)
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}), numpy {np.__version__}"
    )
    print(f"image pair: {args.height}x{args.width}x3 uint8, median of {args.runs} runs")
    for name in ("psnr", "ssim", "lmse", "ncc"):
        fn = getattr(metrics, name)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            value = fn(gt, est)
            times.append(time.perf_counter() - t0)
        print(
            f"{name:5s} {statistics.median(times) * 1e3:8.1f} ms  (min {min(times) * 1e3:.1f}, "
            f"max {max(times) * 1e3:.1f})  value {value:.6f}"
        )
    # Float input takes SSIM's float64 path (uint8 pairs use exact int32 window sums).
    gt_f, est_f = gt.astype(np.float32), est.astype(np.float32)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        value = metrics.ssim(gt_f, est_f)
        times.append(time.perf_counter() - t0)
    print(f"ssim on float32 input {statistics.median(times) * 1e3:8.1f} ms  value {value:.6f}")


if __name__ == "__main__":
    main()
