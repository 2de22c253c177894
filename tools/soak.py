"""Soak test: many images through `dereflect remove`, many benchmarks in one process, nothing grows.

Two checks, on the shipped default student (dereflect/weights/), that unit tests are too short to make:

1. `dereflect remove` over N generated photos (default 1,000: 64-1500 px sides, log-uniform,
   JPEG / 8-bit PNG / a few 16-bit PNG, scikit-image's bundled photos with a flipped second photo
   blended in as a "reflection") plus a few bad files (empty, truncated PNG and JPEG, text named
   .png, a TIFF with a broken frame table). The sizes and formats repeat in cycles of 100 (the
   pictures differ), so every block of 100 images asks for the same work and their memory can be
   compared like for like. `remove` runs as a subprocess whose RSS is read from /proc/PID/status
   every 0.1 s beside the count of outputs written. Pass: exit status 1, the bad files and only
   they named on stderr, every good one written, and the peak RSS over the last 100 images <= the
   peak over images 101-200 (i.e. once the first 100 have run: model, caches and allocator warmed
   up) + a margin: memory does not grow with the count.
2. `dereflect.bench.run_bench` 20 times in this process on an fp32 ONNX export of the same student:
   open file descriptors (/proc/self/fd) and threads (/proc/self/status) the same after the last
   run as after the second (the first starts thread pools once), RSS printed.

    python tools/soak.py                  # both, 1,000 images (`make soak`); ~10 min on 2 cores
    python tools/soak.py --images 200 --bench-repeats 5     # a quicker look

Prints a table of RSS over progress and writes a JSON summary (--json, default runs/soak/soak.json).
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BAD_FILES = ("bad_empty.png", "bad_truncated.png", "bad_truncated.jpg", "bad_text.png", "bad_frames.tif")


# ------------------------------------------------------------------ inputs
def _photos() -> list[np.ndarray]:
    """scikit-image's bundled colour photos (no download), as HxWx3 uint8."""
    from skimage import data

    return [
        np.ascontiguousarray(getattr(data, name)()[..., :3])
        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
    ]


def make_inputs(folder: Path, count: int, cycle: int = 100, seed: int = 0) -> dict[str, int]:
    """`count` good images plus BAD_FILES in `folder`; counts by kind. Sizes and formats repeat
    every `cycle` images (log-uniform sides 64-1500 px; 2 % 16-bit PNG, ~30 % 8-bit PNG, the rest
    JPEG); which photos are blended, and how strongly, differs for every image."""
    from PIL import Image

    from dereflect.images import write_image

    rng = np.random.default_rng(seed)
    plan = [
        (
            (int(math.exp(rng.uniform(math.log(64), math.log(1500)))), int(math.exp(rng.uniform(math.log(64), math.log(1500))))),
            "png16" if k % 50 == 7 else ("png8" if rng.random() < 0.3 else "jpeg"),
        )
        for k in range(cycle)
    ]
    photos = _photos()
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {"jpeg": 0, "png8": 0, "png16": 0}
    for i in range(count):
        (h, w), kind = plan[i % cycle]
        base, over = (photos[j] for j in rng.choice(len(photos), 2, replace=False))
        scene = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR), np.float32)
        refl = np.asarray(Image.fromarray(over[:, ::-1]).resize((w, h), Image.Resampling.BILINEAR), np.float32)
        img = np.clip(scene * 0.8 + refl * rng.uniform(0.1, 0.35), 0, 255)
        kinds[kind] += 1
        name = folder / f"img{i:04d}.{'jpg' if kind == 'jpeg' else 'png'}"
        if kind == "png16":
            write_image(name, np.rint(img * 257).astype(np.uint16))
        elif kind == "png8":
            Image.fromarray(img.astype(np.uint8)).save(name, compress_level=1)
        else:
            Image.fromarray(img.astype(np.uint8)).save(name, quality=90)
    good_png = (folder / "img0000.png") if (folder / "img0000.png").exists() else next(folder.glob("*.png"))
    good_jpg = next(folder.glob("*.jpg"))
    (folder / "bad_empty.png").write_bytes(b"")
    (folder / "bad_truncated.png").write_bytes(good_png.read_bytes()[: good_png.stat().st_size // 2])
    (folder / "bad_truncated.jpg").write_bytes(good_jpg.read_bytes()[: good_jpg.stat().st_size // 3])
    (folder / "bad_text.png").write_text("this is not an image\n" * 20)
    finding = REPO / "fuzz" / "findings" / "TypeError-TiffImagePlugin-1504.bin"  # a fuzz finding: broken frame table
    (folder / "bad_frames.tif").write_bytes(finding.read_bytes() if finding.is_file() else b"II*\x00\x08\x00\x00\x00")
    return kinds


# ------------------------------------------------------------------ process probes
def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (MB) and Threads of a process, from /proc (Linux)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024
            elif key == "Threads":
                out[key] = int(value)
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ 1. remove soak
@dataclass
class Sample:
    seconds: float
    done: int
    rss_mb: int


@dataclass
class RemoveResult:
    exit_code: int
    written: int
    expected_written: int
    reported_bad: list[str]
    samples: list[Sample] = field(default_factory=list)
    peak_mb: int = 0
    seconds: float = 0.0

    def window(self, start: int, stop: int) -> list[int]:
        """RSS (MB) of every sample taken while images start+1 .. stop were being processed."""
        return [s.rss_mb for s in self.samples if start <= s.done < stop]


def _count_outputs(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def soak_remove(inputs: Path, out: Path, good: int, period: float = 0.1) -> RemoveResult:
    """Run `dereflect remove inputs -o out` in a subprocess, sampling its RSS against progress."""
    cmd = [sys.executable, "-m", "dereflect", "remove", str(inputs), "-o", str(out)]
    log_out, log_err = out.parent / "remove.stdout", out.parent / "remove.stderr"
    started = time.monotonic()
    samples: list[Sample] = []
    peak = 0
    with open(log_out, "w") as so, open(log_err, "w") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=REPO)
        while proc.poll() is None:
            try:
                status = proc_status(proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            peak = max(peak, status.get("VmHWM", 0))
            if "VmRSS" in status:  # absent once the process is a zombie
                samples.append(Sample(round(time.monotonic() - started, 2), _count_outputs(out), status["VmRSS"]))
            time.sleep(period)
        code = proc.wait()
    errors = [line for line in log_err.read_text().splitlines() if line.startswith("error: ")]
    reported = sorted({Path(line[len("error: ") :].split(": ", 1)[0]).name for line in errors})
    return RemoveResult(code, _count_outputs(out), good, reported, samples, peak, time.monotonic() - started)


# ------------------------------------------------------------------ 2. bench soak
def soak_bench(work: Path, repeats: int) -> list[dict[str, int]]:
    """run_bench `repeats` times in this process on a small fp32 ONNX export of the default student."""
    from dereflect.bench import BenchOptions, run_bench
    from dereflect.export.formats import FORMATS_BY_NAME
    from dereflect.export.pipeline import Exporter, ExportOptions
    from dereflect.runtime.resolve import default_checkpoint

    art = work / "artifacts"
    Exporter(default_checkpoint(), art, ExportOptions(precision="fp32", size=64, val_count=2), log=lambda _: None).run(
        [FORMATS_BY_NAME["onnx"]]
    )
    opts = BenchOptions(sizes=(64,), runs=3, warmup=1, time_cap_s=2.0, max_pairs=2, synth_size=64, thumbs=0)
    series = []
    for i in range(repeats):
        result = run_bench(art, opts, log=lambda _: None)
        assert result.rows, "the benchmark produced no rows"
        status = proc_status()
        series.append(
            {
                "run": i + 1,
                "fds": open_fds(),
                "threads": status["Threads"],
                "py_threads": threading.active_count(),
                "rss_mb": status["VmRSS"],
                "rows": len(result.rows),
            }
        )
        print(
            f"  bench run {i + 1:2d}: fds {series[-1]['fds']}, threads {status['Threads']} "
            f"(python {series[-1]['py_threads']}), RSS {status['VmRSS']} MB",
            flush=True,
        )
    return series


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000, help="good images for `dereflect remove` (default 1000)")
    ap.add_argument("--bench-repeats", type=int, default=20, help="run_bench calls in one process (default 20)")
    ap.add_argument("--cycle", type=int, default=100, help="sizes and formats repeat every CYCLE images (default 100)")
    ap.add_argument(
        "--rss-margin-mb",
        type=int,
        default=150,
        help="allowed growth of the peak RSS from the second block of CYCLE images to the last "
        "(default 150 MB, or 15 %% of that peak if more)",
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--json", type=Path, default=REPO / "runs" / "soak" / "soak.json", help="summary file")
    ap.add_argument("--skip-remove", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="dereflect-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    summary: dict = {"images": args.images, "bad": list(BAD_FILES)}
    failures: list[str] = []
    try:
        if not args.skip_remove:
            t0 = time.monotonic()
            kinds = make_inputs(work / "in", args.images, args.cycle)
            print(f"generated {args.images} images ({kinds}) + {len(BAD_FILES)} bad ones in {time.monotonic() - t0:.0f} s", flush=True)
            res = soak_remove(work / "in", work / "out", args.images)
            print(
                f"dereflect remove: exit {res.exit_code} in {res.seconds:.0f} s, {res.written} written, "
                f"peak RSS {res.peak_mb} MB; bad files reported: {', '.join(res.reported_bad)}"
            )
            cycle = min(args.cycle, args.images)
            print(f"  RSS while processing each block of {cycle} images (same sizes and formats in every block):")
            blocks = []
            for start in range(0, args.images, cycle):
                rss = res.window(start, start + cycle)
                if rss:
                    blocks.append(
                        {
                            "images": f"{start + 1}-{min(start + cycle, args.images)}",
                            "peak_mb": max(rss),
                            "median_mb": int(np.median(rss)),
                            "samples": len(rss),
                        }
                    )
                    print(f"  {blocks[-1]['images']:>10}: peak {max(rss)} MB, median {blocks[-1]['median_mb']} MB ({len(rss)} samples)")
            summary["remove"] = {
                "exit_code": res.exit_code,
                "written": res.written,
                "reported_bad": res.reported_bad,
                "seconds": round(res.seconds, 1),
                "peak_mb": res.peak_mb,
                "blocks": blocks,
                "kinds": kinds,
                "series": [vars(s) for s in res.samples[:: max(1, len(res.samples) // 400)]],
            }
            if res.exit_code != 1:
                failures.append(f"remove exited {res.exit_code}, expected 1 (some inputs are bad)")
            if res.reported_bad != sorted(BAD_FILES):
                failures.append(f"remove reported {res.reported_bad}, expected exactly {sorted(BAD_FILES)}")
            if res.written != args.images:
                failures.append(f"remove wrote {res.written} outputs, expected {args.images}")
            if len(blocks) >= 3:
                first, last = blocks[1], blocks[-1]  # block 1 warms up (model, caches, allocator)
                margin = max(args.rss_margin_mb, int(0.15 * first["peak_mb"]))
                summary["remove"]["rss_check"] = {"first": first, "last": last, "margin_mb": margin}
                if last["peak_mb"] > first["peak_mb"] + margin:
                    failures.append(
                        f"peak RSS grew from {first['peak_mb']} MB (images {first['images']}) to "
                        f"{last['peak_mb']} MB (images {last['images']}): more than {margin} MB"
                    )
        if not args.skip_bench:
            print(f"run_bench x{args.bench_repeats} in one process:", flush=True)
            series = soak_bench(work, args.bench_repeats)
            summary["bench"] = series
            if len(series) >= 2:
                warm, end = series[1], series[-1]
                if end["fds"] != warm["fds"]:
                    failures.append(f"open file descriptors went from {warm['fds']} (run 2) to {end['fds']} (run {end['run']})")
                if end["threads"] > warm["threads"] or end["py_threads"] > warm["py_threads"]:
                    failures.append(f"threads went from {warm['threads']} (run 2) to {end['threads']} (run {end['run']})")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    summary["failures"] = failures
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {args.json}")
    for f in failures:
        print(f"FAIL: {f}")
    print("soak: passed" if not failures else f"soak: {len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
