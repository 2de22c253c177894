"""`dereflect remove` as a new user runs it: the default fast path vs the torch path, and the slim install.

Three measurements, each `dereflect remove` in a fresh process (what a user waits for), the
configurations interleaved run by run so a busy machine slows them alike; medians of --runs:

1. 12 MP photo: no options (the shipped student's fastest verified artifact) vs `--backend torch`.
   Wall time of the whole command, and the model's own seconds (the CLI's per-image line). Then
   one in-process run of each splits the wall time into import, load, decode, run (the backend's
   inference vs the tiling around it) and encode: where the time outside the model goes.
2. Cold start on one ~1 MP photo (import + load + one photo): the slim install (`pip install
   dereflect`: no torch, ONNX Runtime INT8) vs this install's default vs `--backend torch` (what
   `dereflect remove` ran before the shipped artifacts). Target: slim >= 3x faster than torch.
3. The slim install's size: site-packages of a throwaway venv made with `pip install -c
   constraints.txt <this checkout>` (core dependencies only; it must not contain torch), vs this .venv.

Usage: .venv/bin/python speed/bench_default_path.py [--runs 5] [--slim /tmp/dereflect-slim]
       [--json results/default-path/bench.json] [--skip-slim]
The photos are a real photo (shared data's first sun_hays80 image, else scikit-image's astronaut)
resized to 4000x3000 and 1152x864 and saved as JPEG (quality 92), made before anything is timed.
Load average is printed before and after: on a shared 2-core machine it moves every number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "sun_hays80"
SIZES = {"12mp": (4000, 3000), "1mp": (1152, 864)}
LINE = re.compile(r"\((\d+)x(\d+), (\d+) tiles?, ([\d.]+) s on (\w+)\)")

PHASES = r"""
import sys, time
W, C = time.perf_counter, time.process_time
t = [(W(), C())]
import dereflect.cli  # noqa: F401  (what `dereflect` imports before any command runs)
t.append((W(), C()))
from dereflect.images import read_image, write_image
from dereflect.runtime import load
args = sys.argv[1:]
session = load("default", args[2] if len(args) > 2 else "auto")
t.append((W(), C()))
img = read_image(args[0])
t.append((W(), C()))
infer, spent = session.impl.infer, [0.0, 0.0]
def timed(batch):
    a, c = W(), C()
    out = infer(batch)
    spent[0] += W() - a; spent[1] += C() - c
    return out
session.impl.infer = timed
stream = getattr(session.impl, "infer_stream", None)
def timed_stream(batches):  # tiles in flight (OpenVINO): time spent waiting for results, incl. cutting the tiles it pulls
    results = stream(batches)
    while True:
        a, c = W(), C()
        try:
            out = next(results)
        except StopIteration:
            return
        finally:
            spent[0] += W() - a; spent[1] += C() - c
        yield out
if stream is not None and type(session.impl).infer_stream is not __import__('dereflect.runtime.backends.base', fromlist=['Backend']).Backend.infer_stream:
    session.impl.infer_stream = timed_stream  # else the base class's one-by-one stream calls the timed infer
clean = session.run(img.pixels)
t.append((W(), C()))
write_image(args[1], clean, icc_profile=img.icc_profile, exif=img.exif)
t.append((W(), C()))
names = ["import", "load", "decode", "run", "encode"]
out = {n: [round(t[i + 1][0] - t[i][0], 3), round(t[i + 1][1] - t[i][1], 3)] for i, n in enumerate(names)}
out["infer"] = [round(spent[0], 3), round(spent[1], 3)]
out["tiling"] = [round(out["run"][0] - spent[0], 3), round(out["run"][1] - spent[1], 3)]
out["summary"] = session.summary()
print("PHASES " + __import__("json").dumps(out))
"""


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def make_photo(folder: Path, size: tuple[int, int], name: str) -> Path:
    from PIL import Image

    files = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if PHOTOS.is_dir() else []
    if files:
        src = Image.open(files[0]).convert("RGB")
    else:
        from skimage import data

        src = Image.fromarray(data.astronaut())
    path = folder / name
    src.resize(size, Image.BICUBIC).save(path, quality=92)
    return path


def run_remove(python: Path, photo: Path, out: Path, extra: list[str]) -> tuple[float, float | None, str]:
    """(wall seconds, model seconds from the CLI's line, backend summary) of one `dereflect remove`."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(python.parent / "dereflect"), "remove", str(photo), "-o", str(out), *extra]  # the console script a user runs
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    match = LINE.search(proc.stdout)
    summary = next((ln[len("backend: ") :].split(" | ")[0] for ln in proc.stdout.splitlines() if ln.startswith("backend: ")), "?")
    return wall, float(match.group(4)) if match else None, summary


def interleaved(configs: dict[str, tuple[Path, list[str]]], photo: Path, tmp: Path, runs: int) -> dict[str, dict]:
    """Each configuration `runs` times, round-robin; medians and every sample."""
    samples: dict[str, list[tuple[float, float | None]]] = {name: [] for name in configs}
    summaries: dict[str, str] = {}
    for python, extra in configs.values():  # one warm-up each: page cache, OpenVINO's compile cache
        run_remove(python, photo, tmp / "out", extra)
    for _ in range(runs):
        for name, (python, extra) in configs.items():
            wall, model, summary = run_remove(python, photo, tmp / "out", extra)
            samples[name].append((wall, model))
            summaries[name] = summary
    result = {}
    for name, rows in samples.items():
        walls = [w for w, _ in rows]
        models = [m for _, m in rows if m is not None]
        result[name] = {
            "backend": summaries[name],
            "args": configs[name][1],
            "wall_s": round(statistics.median(walls), 3),
            "model_s": round(statistics.median(models), 3) if models else None,
            "wall_samples": [round(w, 3) for w in walls],
        }
        print(
            f"  {name:28s} wall {result[name]['wall_s']:6.2f} s   model {result[name]['model_s'] or 0:6.2f} s   [{summaries[name]}]",
            flush=True,
        )
    return result


def phases(python: Path, photo: Path, tmp: Path, backend: str) -> dict:
    proc = subprocess.run(
        [str(python), "-c", PHASES, str(photo), str(tmp / "phase.jpg"), backend], capture_output=True, text=True, cwd=ROOT
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PHASES ")), None)
    if line is None:
        raise SystemExit(f"phase run failed:\n{proc.stderr[-2000:]}")
    data = json.loads(line[len("PHASES ") :])
    parts = "  ".join(f"{k} {data[k][0]:.2f}" for k in ("import", "load", "decode", "infer", "tiling", "encode"))
    print(f"  {data['summary']:44s} {parts}  (wall s; CPU s in the JSON)", flush=True)
    return data


#: What `python -m venv` puts in every venv: not part of what `pip install dereflect` brings.
VENV_BOOTSTRAP = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth")


def site_packages_mb(python: Path) -> dict[str, float]:
    """MB of site-packages: all of it, and without the venv's own pip/setuptools."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    folder = Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    sizes: dict[str, int] = {}
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            top = f.relative_to(folder).parts[0]
            sizes[top] = sizes.get(top, 0) + f.stat().st_size
    boot = sum(n for top, n in sizes.items() if top in VENV_BOOTSTRAP or top.split("-")[0] in VENV_BOOTSTRAP)
    total = sum(sizes.values())
    return {"total": round(total / 1e6, 1), "without_pip_setuptools": round((total - boot) / 1e6, 1)}


def make_slim(venv: Path) -> Path:
    """A throwaway venv with `pip install -c constraints.txt <a copy of this checkout's files>`: core dependencies only."""
    python = venv / "bin" / "python"
    if python.is_file():
        return python
    print(f"making the slim install in {venv} (pip install -c constraints.txt <checkout>)", flush=True)
    src = Path(tempfile.mkdtemp(prefix="dereflect-src-"))
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in files.stdout.splitlines():
        path = ROOT / name
        if path.is_file() and not name.startswith("android_demo/node_modules"):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), str(src)], check=True)
    shutil.rmtree(src, ignore_errors=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--slim", type=Path, default=Path(tempfile.gettempdir()) / "dereflect-slim", help="the slim venv (made when absent)"
    )
    parser.add_argument("--skip-slim", action="store_true", help="only part 1")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    full = Path(sys.executable)
    report: dict = {"machine": {}, "runs": args.runs}
    from dereflect.bench.machine import machine_info

    report["machine"] = machine_info()
    report["loadavg_before"] = loadavg()
    print(f"machine: {report['machine'].get('cpu')}, {os.cpu_count()} CPUs; load average {report['loadavg_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-default-") as name:
        tmp = Path(name)
        big = make_photo(tmp, SIZES["12mp"], "photo-12mp.jpg")
        small = make_photo(tmp, SIZES["1mp"], "photo-1mp.jpg")

        print(f"1. 12 MP photo ({SIZES['12mp'][0]}x{SIZES['12mp'][1]}), `dereflect remove` in a fresh process, median of {args.runs}:")
        report["12mp"] = interleaved(
            {"no options (default)": (full, []), "--backend torch": (full, ["--backend", "torch"])}, big, tmp, args.runs
        )
        print("   where the wall time goes (one in-process run each):")
        report["12mp_phases"] = {"default": phases(full, big, tmp, "auto"), "torch": phases(full, big, tmp, "torch")}

        if not args.skip_slim:
            slim = make_slim(args.slim)
            has_torch = subprocess.run(
                [str(slim), "-c", "import importlib.util as u; print(u.find_spec('torch') is not None)"], capture_output=True, text=True
            )
            report["slim"] = {
                "venv": str(args.slim),
                "site_packages_mb": site_packages_mb(slim),
                "full_site_packages_mb": site_packages_mb(full),
                "torch_installed": has_torch.stdout.strip() == "True",
            }
            slim_mb, full_mb = report["slim"]["site_packages_mb"], report["slim"]["full_site_packages_mb"]
            print(
                f"3. slim install: site-packages {slim_mb['total']} MB ({slim_mb['without_pip_setuptools']} MB without the venv's pip/setuptools); "
                f"this .venv (make's .[all]): {full_mb['total']} MB; torch installed in the slim one: {report['slim']['torch_installed']}",
                flush=True,
            )
            print(f"2. cold start, one {SIZES['1mp'][0]}x{SIZES['1mp'][1]} photo (import + load + run + write), median of {args.runs}:")
            configs = {
                "slim install (default)": (slim, []),
                "full install (default)": (full, []),
                "full install --backend torch": (full, ["--backend", "torch"]),
            }
            report["cold_start_1mp"] = interleaved(configs, small, tmp, args.runs)
            cold = report["cold_start_1mp"]
            report["cold_start_speedup_slim_vs_torch"] = round(
                cold["full install --backend torch"]["wall_s"] / cold["slim install (default)"]["wall_s"], 2
            )
            print(f"   slim vs torch: {report['cold_start_speedup_slim_vs_torch']}x faster cold start", flush=True)
        big12 = report["12mp"]
        report["speedup_12mp_default_vs_torch"] = round(big12["--backend torch"]["wall_s"] / big12["no options (default)"]["wall_s"], 2)
    report["loadavg_after"] = loadavg()
    print(f"12 MP: default {report['speedup_12mp_default_vs_torch']}x faster than torch; load average after: {report['loadavg_after']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
