"""The ExecuTorch (.pte) and LiteRT (.tflite) rows beside ONNX Runtime and OpenVINO, through the bench runner.

Exports one student (random-weights student-nano by default, like the README's export table, or
--checkpoint) at a fixed 512x512 to pte and tflite (fp32, int8), plus onnx and openvino (fp32,
int8) for a side-by-side under the same load, then runs `dereflect bench`'s loop (bench_folder)
on synthesised 512x512 pairs: parity against PyTorch fp32 and latency at 512x512 (median of
--runs, end to end and model only), written as a ledger and an HTML report. The machine's load
average is printed before and after: on a shared 2-core machine it moves every number.

Usage: .venv/bin/python speed/bench_mobile_rows.py [--runs 20] [--out runs/bench-mobile] [--checkpoint CKPT]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dereflect.bench.runner import BenchOptions, bench_folder
from dereflect.export.formats import FORMATS_BY_NAME
from dereflect.export.pipeline import Exporter, ExportOptions
from dereflect.models import save_checkpoint
from dereflect.models.reference import reference_student

SIZE = 512


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-mobile"))
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--formats", default="onnx,openvino,pte,tflite")
    args = ap.parse_args()
    art = args.out / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint or save_checkpoint(reference_student("student-nano", seed=0), args.out / "student-nano.safetensors")
    print(f"load average before: {os.getloadavg()}")
    formats = [FORMATS_BY_NAME[f] for f in args.formats.split(",")]
    for precision in ("fp32", "int8"):
        opts = ExportOptions(precision=precision, size=SIZE, val_count=4, calib_count=16)
        for r in Exporter(ckpt, art, opts, log=lambda line: print(f"  {line}")).run(formats):
            if r.status not in ("passed", "not run"):
                print(f"  {r.format} {r.precision}: {r.status} {r.message}")
    opts = BenchOptions(sizes=(SIZE,), runs=args.runs, warmup=3, time_cap_s=60.0, synth_size=SIZE, thumbs=2)
    result, _ = bench_folder(art, opts, [], args.out / "bench.json", args.out / "bench.html", log=print)
    print(f"load average after: {os.getloadavg()}")
    print("| format | precision | backend | size KiB | parity | max abs diff | SSIM drop | latency ms (e2e) | model ms |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|")
    for row in result.rows:
        size = f"{row['size_bytes'] / 1024:.0f}" if row.get("size_bytes") else "-"
        diff = row.get("max_abs_diff")
        drop = row.get("ssim_drop")
        print(
            f"| {row['format']} | {row['precision']} | {row['backend']} | {size} | {row['status']} | "
            f"{'-' if diff is None else f'{diff:.2g}'} | {'-' if drop is None else f'{drop:.4f}'} | "
            f"{row['latency_ms']:.1f} | {row['model_latency_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
