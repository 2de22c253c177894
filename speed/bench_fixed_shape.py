"""Fixed-shape vs dynamic artifacts of one student: ORT's mobile checker, CPU latency, tiling error.

Why: `--fixed-shape` artifacts exist for phone NPUs (NNAPI, Core ML), which this machine does not
have; what can be measured here is what the checker says (partitions, nodes each EP takes), what
the fixed tiles cost on the CPU (model only at the tile size, end to end on real photos whose
size is not a multiple of the tile) and how far their output is from the dynamic artifact's on
the same photo (8-bit levels; tiling and the padding of a tile the photo does not fill).

Usage: .venv/bin/python speed/bench_fixed_shape.py [--model student-nano] [--shape 512x512]
       [--precision fp32,int8] [--runs 10] [--warmup 2] [--out DIR]
Photos: scikit-image's bundled chelsea (300x451), coffee (400x600) and hubble_deep_field
(872x1000). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dereflect.export import mobile_check
from dereflect.export.formats import FORMATS_BY_NAME
from dereflect.export.onnx import parse_hw
from dereflect.export.pipeline import Exporter, ExportOptions
from dereflect.runtime import load
from dereflect.runtime.resolve import shipped_checkpoint
from dereflect.runtime.tiling import network_input

PHOTOS = ("chelsea", "coffee", "hubble_deep_field")


def _median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def _export(ckpt: Path, out: Path, precision: str, shape: tuple[int, int] | None, base: Path | None) -> tuple[Path, Path]:
    opts = ExportOptions(precision=precision, size=128, val_count=2, calib_count=8, fixed_shapes=(shape,) if shape else ())
    exporter = Exporter(ckpt, out, opts, log=lambda _: None, base_onnx=base)
    if base is None:
        base = Path(tempfile.mkdtemp()) / "base-fp32.onnx"
        base.write_bytes(exporter.onnx_path("fp32").read_bytes())
    [result] = exporter.run([FORMATS_BY_NAME["onnx"]])
    if result.status != "passed":
        sys.exit(f"{result.artifact}: {result.status} {result.message}")
    return result.artifact, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="student-nano")
    parser.add_argument("--shape", default="512x512")
    parser.add_argument("--precision", default="fp32,int8")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from skimage import data

    ckpt = shipped_checkpoint(args.model) or Path(args.model)
    hw = parse_hw(args.shape)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-fixed-"))
    photos = {name: np.ascontiguousarray(getattr(data, name)()) for name in PHOTOS}
    print(f"{args.model}, fixed {hw[0]}x{hw[1]} vs dynamic, ONNX Runtime CPU, median of {args.runs}")
    print(
        "| precision | graph | checker NNAPI / Core ML MLProgram | model ms at the tile | "
        + " | ".join(f"{n} {p.shape[1]}x{p.shape[0]} ms (tiles)" for n, p in photos.items())
        + " | max / mean diff vs dynamic (levels) |"
    )
    print("|---|---|---|---:|" + "---:|" * len(photos) + "---|")
    base = None
    for precision in args.precision.split(","):
        dyn_path, base = _export(ckpt, out / "dynamic", precision, None, base)
        fix_path, base = _export(ckpt, out / "fixed", precision, hw, base)
        sessions = {"dynamic": load(dyn_path, backend="onnxruntime"), "fixed": load(fix_path, backend="onnxruntime")}
        x = network_input(photos["coffee"][: hw[0], : hw[1]], *hw)
        whole = {n: sessions["dynamic"].run(p) for n, p in photos.items()}
        for kind, session in sessions.items():
            report = mobile_check.check(dyn_path if kind == "dynamic" else fix_path)["eps"]
            checker = " / ".join(
                f"{report[ep]['partitions']} part., {report[ep]['supported_nodes']}/{report[ep]['nodes']}"
                for ep in ("NNAPI", "CoreML MLProgram")
            )
            model_ms = _median_ms(lambda s=session, x=x: s.impl.infer(x), args.runs, args.warmup)
            cells, diffs = [], []
            for name, photo in photos.items():
                ms = _median_ms(lambda s=session, p=photo: s.run(p), args.runs, args.warmup)
                cells.append(f"{ms:.1f} ({session.plan(*photo.shape[:2]).count})")
                d = np.abs(session.run(photo).astype(int) - whole[name].astype(int))
                diffs.append(f"{d.max()} / {d.mean():.4f}")
            print(f"| {precision} | {kind} | {checker} | {model_ms:.1f} | " + " | ".join(cells) + f" | {', '.join(diffs)} |")


if __name__ == "__main__":
    main()
