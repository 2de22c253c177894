"""Build every export format x precision for a student and time it: size, parity, CPU latency.

Why: the export table decides what ships to which device; this puts each artifact's size, its
parity against PyTorch fp32 (max |diff|, SSIM drop on synthesised pairs at the export size) and
its latency at 512x512 side by side, on this machine (median of --runs after --warmup runs,
batch 1; ONNX Runtime CPU for .onnx/.ort, OpenVINO CPU for the IR; PyTorch eager as the
baseline). Core ML cannot run off macOS and TensorRT needs a CUDA GPU: their rows say so.

Usage: .venv/bin/python speed/bench_export.py [--checkpoint CKPT] [--model student-nano]
       [--out DIR] [--runs 10] [--warmup 3] [--latency-size 512] [--size 256] [--threads 0]
Without --checkpoint the student is `reference_student` (seeded random weights with realistic
activation ranges; a fresh student would be the identity and every parity number trivial).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dereflect.export.formats import FORMATS, format_status
from dereflect.export.pipeline import Exporter, ExportOptions, ExportResult
from dereflect.models import load_checkpoint, save_checkpoint
from dereflect.models.reference import reference_student


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_ms(run: Callable[[np.ndarray], object], x: np.ndarray, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def _runner(result: ExportResult, threads: int) -> tuple[Callable[[np.ndarray], object] | None, str]:
    """Latency runner for an artifact and what runs it, or None and why not."""
    path = result.artifact
    if path is None:
        return None, "not built"
    if path.suffix in (".onnx", ".ort"):
        from dereflect.export.quantize import feeds, session

        sess = session(path, threads=threads or None)
        return (lambda x: sess.run(["transmission"], feeds(sess, x))), "ORT CPU"
    if path.name.endswith("_openvino"):
        from dereflect.export.openvino import openvino_runner

        return openvino_runner(path, precision_hint="f32", threads=threads or None), "OpenVINO CPU (f32 hint)"
    if path.suffix == ".mlpackage":
        if sys.platform == "darwin":
            from dereflect.export.coreml import coreml_runner

            return coreml_runner(path), "Core ML CPU"
        return None, "needs macOS"
    return None, "no runner here"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--model", default="student-nano")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--latency-size", type=int, default=512)
    parser.add_argument("--size", type=int, default=256, help="export size: calibration and parity images")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for every runtime (0 = its default)")
    args = parser.parse_args()

    import onnxruntime
    import openvino
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.platform()}, {_cpu()}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}); "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}"
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-export-"))
    if args.checkpoint:
        ckpt = args.checkpoint
        model = load_checkpoint(ckpt, expect="student")
    else:
        model = reference_student(args.model, seed=0)
        ckpt = save_checkpoint(model, out / "checkpoint" / f"{args.model}.safetensors")
    formats = [f for f in FORMATS if format_status(f.name).can_build]
    skipped = [(f.name, format_status(f.name).build_reason) for f in FORMATS if not format_status(f.name).can_build]
    results: list[ExportResult] = []
    base = None
    for precision in ("fp32", "fp16", "int8"):
        opts = ExportOptions(precision=precision, size=args.size)
        exporter = Exporter(ckpt, out / precision, opts, log=lambda line: print("  " + line), model=model, base_onnx=base)
        results += exporter.run(formats)
        base = base or out / "fp32" / f"{model.model_name}-fp32.onnx"

    x = np.random.default_rng(0).random((1, 3, args.latency_size, args.latency_size), dtype=np.float32)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        torch_ms = _median_ms(lambda _: model(xt), x, args.runs, args.warmup)
    print(
        f"\nlatency at {args.latency_size}x{args.latency_size}, batch 1, median of {args.runs} after {args.warmup} warm-up; "
        f"parity on {opts.size}px synthesised pairs vs PyTorch fp32\n"
    )
    print("| format | precision | artifact | size KiB | parity | max abs diff | SSIM drop | latency ms | runs on |")
    print("|---|---|---|---:|---|---:|---:|---:|---|")
    print(f"| pytorch | fp32 | (eager) | - | reference | 0 | 0 | {torch_ms:.1f} | torch CPU |")
    for r in results:
        m = (r.parity or {}).get("metrics", {})
        run, how = _runner(r, args.threads)
        latency = f"{_median_ms(run, x, args.runs, args.warmup):.1f}" if run else "-"
        diff = f"{float(m['max_abs_diff']):.2g}" if "max_abs_diff" in m else "-"
        drop = f"{float(m['ssim_drop']):+.4f}" if "ssim_drop" in m else "-"
        name = r.artifact.name if r.artifact else "-"
        status = r.status if r.status != "error" else f"error: {r.message[:60]}"
        print(f"| {r.format} | {r.precision} | {name} | {r.size_bytes / 1024:.0f} | {status} | {diff} | {drop} | {latency} | {how} |")
    for name, reason in skipped:
        print(f"| {name} | all | - | - | skipped | - | - | - | {reason} |")
    print(f"\nartifacts in {out}")


if __name__ == "__main__":
    main()
