"""Time and peak memory of `Session.run` on 1, 12 and 24 megapixel photos, per backend.

Why: the runtime promises any resolution with bounded memory (tiles streamed into a float32 band,
never a float copy of the whole photo). This measures it: each (backend, size) runs in a fresh
subprocess, so its peak RSS is its own. The photo is a real one upscaled to the size (bicubic),
made before the measurement starts; the session is loaded once (its set-up is reported apart).
Per run: the first call (includes each backend's per-shape set-up) and the best of the rest,
seconds per megapixel, RSS before the run, and the peak RSS during the runs (Linux: VmHWM after
resetting it through /proc/self/clear_refs; elsewhere the process's ru_maxrss).

Usage: .venv/bin/python speed/bench_runtime.py [--model CKPT_OR_EXPORT_DIR] [--backends torch,onnxruntime]
       [--sizes 1,12,24] [--runs 2] [--json FILE]
Without --model a seeded perturbed student-nano (`reference_student`) is saved and exported to
ONNX (and OpenVINO when asked for) in a temporary folder; speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dereflect.bench.machine import rss_mb

SHAPES = {1: (864, 1152), 4: (1728, 2304), 12: (3000, 4000), 24: (4000, 6000)}  # megapixels -> (H, W), 4:3; 4 MP is the largest run untiled
PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sun_hays80"


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb(reset_ok: bool) -> float:
    if reset_ok:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _photo(h: int, w: int) -> np.ndarray:
    """A real photo upscaled to h x w (the astronaut when the shared data is absent)."""
    from PIL import Image

    files = sorted(p for p in PHOTO.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if PHOTO.is_dir() else []
    if files:
        src = Image.open(files[0]).convert("RGB")
    else:
        from skimage import data

        src = Image.fromarray(data.astronaut())
    return np.asarray(src.resize((w, h), Image.BICUBIC))


def worker(model: str, backend: str, mp: int, runs: int) -> dict:
    from dereflect.runtime import load

    h, w = SHAPES[mp]
    image = _photo(h, w)
    started = time.perf_counter()
    session = load(model, backend)
    load_s = time.perf_counter() - started
    rss_before = rss_mb()
    reset_ok = _reset_peak()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        out = session.run(image)
        times.append(time.perf_counter() - started)
        del out
    best = min(times[1:]) if len(times) > 1 else times[0]
    return {
        "backend": session.backend,
        "detail": session.describe(),
        "megapixels": round(h * w / 1e6, 2),
        "shape": [h, w],
        "tiles": session.plan(h, w).count,
        "load_s": round(load_s, 3),
        "first_s": round(times[0], 3),
        "best_s": round(best, 3),
        "s_per_mp": round(best / (h * w / 1e6), 3),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_mb(reset_ok), 1),
        "peak_is_run_only": reset_ok,
        "image_mb": round(image.nbytes / 2**20, 1),
    }


def _models(model: str | None, backends: list[str], tmp: Path) -> dict[str, str]:
    """backend -> model path: the given one for every backend, or a fresh checkpoint + exports."""
    if model is not None:
        return {b: model for b in backends}
    from dereflect.export.formats import FORMATS_BY_NAME
    from dereflect.export.pipeline import Exporter, ExportOptions
    from dereflect.models import save_checkpoint
    from dereflect.models.reference import reference_student

    student = reference_student("student-nano", seed=0)
    ckpt = save_checkpoint(student, tmp / "student-nano.safetensors")
    formats = [FORMATS_BY_NAME[n] for n in ("onnx", "openvino") if n in backends or (n == "onnx" and "onnxruntime" in backends)]
    if formats:
        Exporter(ckpt, tmp / "export", ExportOptions(precision="fp32", size=64, val_count=2), log=lambda _: None, model=student).run(
            formats
        )
    paths = {
        "torch": str(ckpt),
        "onnxruntime": str(tmp / "export" / "student-nano-fp32.onnx"),
        "openvino": str(tmp / "export" / "student-nano-fp32_openvino"),
    }
    return {b: paths[b] for b in backends}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint, artifact or export folder (default: a perturbed student-nano)")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--sizes", default="1,12,24", help="megapixels, from " + ",".join(map(str, SHAPES)))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "BACKEND", "MP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, backend, mp = args.worker
        print(json.dumps(worker(model, backend, int(mp), args.runs)))
        return

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        models = _models(args.model, backends, Path(tmp))
        print(
            f"{'backend':<12} {'MP':>5} {'tiles':>5} {'first s':>8} {'best s':>7} {'s/MP':>6} "
            f"{'RSS before':>10} {'peak RSS':>9} {'peak/MP':>8}"
        )
        for backend in backends:
            for mp in sizes:
                cmd = [sys.executable, __file__, "--worker", models[backend], backend, str(mp), "--runs", str(args.runs)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{backend:<12} {mp:>5} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"{row['backend']:<12} {row['megapixels']:>5} {row['tiles']:>5} {row['first_s']:>8.2f} "
                    f"{row['best_s']:>7.2f} {row['s_per_mp']:>6.3f} {row['rss_before_mb']:>8.0f}MB "
                    f"{row['peak_rss_mb']:>7.0f}MB {row['peak_rss_mb'] / row['megapixels']:>6.0f}MB",
                    flush=True,
                )
    if rows:
        print(
            "# peak RSS is the whole process during the runs (model, input and output photos included);"
            f" input photo = {rows[-1]['image_mb']:.0f} MB uint8 at the last size"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
