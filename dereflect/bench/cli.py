"""`dereflect bench`: latency and SSIM/LMSE parity per target; the loop lives in bench/runner.py.

Answers "which artifact do I ship to which device, and what does it cost in quality?": a console
table, a JSON ledger (rows merge across machines: --merge, and the browser demo's ledger), an
HTML report, and an exit status usable as a CI gate (1 when any target fails its parity budget
or errors; targets this machine cannot run at all, like Core ML off macOS, do not fail it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer

from dereflect.bench.ledger import BROWSER_LEDGER
from dereflect.errors import DereflectError, UsageError
from dereflect.export.cli import MAX_DIFF, MAX_LMSE_RISE, MAX_SSIM_DROP


def bench_command(
    artifact_dir: Path = typer.Argument(..., help="Folder of exported artifacts, or a student checkpoint to export first."),
    pairs: Optional[Path] = typer.Option(
        None,
        "--pairs",
        help="Paired set (blended/ + transmission/) or synthetic sequence set for PSNR/SSIM/LMSE (default: 4 synthesised pairs).",
    ),
    sizes: str = typer.Option("512,1024", "--sizes", help="Comma-separated square sizes (px) to time."),
    json_out: Optional[Path] = typer.Option(None, "--json", help='JSON ledger to write ({"rows": [...]} plus a summary).'),
    report: Optional[Path] = typer.Option(None, "--report", help="HTML report to write (self-contained)."),
    runs: int = typer.Option(10, "--runs", help="Timed runs per target and size (after warm-up)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed runs first."),
    time_cap: float = typer.Option(10.0, "--time-cap", help="Stop timing a target at a size after this many seconds (at least 3 runs)."),
    min_ssim: Optional[float] = typer.Option(None, "--min-ssim", help="Fail any target whose mean SSIM is below this floor."),
    merge: list[Path] = typer.Option([], "--merge", help="Other ledgers to merge (repeat): other machines, device_runner.py output."),
    browser_ledger: Path = typer.Option(BROWSER_LEDGER, "--browser-ledger", help="The browser demo's ledger, merged when present."),
    backends: Optional[str] = typer.Option(None, "--backends", help="Only these backends (comma-separated: onnxruntime, openvino, ...)."),
    export_dir: Optional[Path] = typer.Option(None, "--export-dir", help="With a checkpoint: export here (default: a temporary folder)."),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", help="Score only the first N pairs."),
    max_diff: Optional[float] = MAX_DIFF,
    max_ssim_drop: Optional[float] = MAX_SSIM_DROP,
    max_lmse_rise: Optional[float] = MAX_LMSE_RISE,
    thumbs: int = typer.Option(6, "--thumbs", help="Pairs shown as before/after thumbnails in the report."),
) -> None:
    """Benchmark every artifact on every backend here: latency, size, memory, SSIM/LMSE parity.

    Exit 1 when any target fails its parity budget (or --min-ssim), so it can gate CI.

    Example: dereflect bench artifacts/ --pairs data/real_pairs --sizes 256,512 --json b.json --report b.html
    """
    from rich.console import Console

    from dereflect.bench.runner import BenchOptions, parse_sizes

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=220)
    timing = dict(sizes=parse_sizes(sizes), runs=runs, warmup=warmup, time_cap_s=time_cap)
    quality = dict(pairs=pairs, max_pairs=max_pairs, min_ssim=min_ssim, thumbs=max(thumbs, 0))
    budget = dict(max_abs_diff=max_diff, max_ssim_drop=max_ssim_drop, max_lmse_rise=max_lmse_rise)
    only = tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None
    opts = BenchOptions(backends=only, **timing, **quality, **budget)
    opts.check()
    merged = [p for p in merge] + ([browser_ledger] if browser_ledger.is_file() and browser_ledger not in merge else [])
    from dereflect.bench.ledger import load_ledger

    for path in merged:
        load_ledger(path)  # bad files refused before any work
    from dereflect.files import check_writable

    for path, option in ((json_out, "--json"), (report, "--report")):
        if path is not None:
            check_writable(path, option)  # before minutes of benchmarking, not after
    if not artifact_dir.exists():
        raise DereflectError(artifact_dir, "no such folder or checkpoint")
    if artifact_dir.is_file():
        if artifact_dir.suffix != ".safetensors":
            raise DereflectError(artifact_dir, "expected a folder of exported artifacts or a .safetensors student checkpoint")
        if export_dir is not None:
            return bench_and_report(console, _export(console, artifact_dir, export_dir), opts, merged, json_out, report)
        with tempfile.TemporaryDirectory(prefix="dereflect-bench-") as tmp:
            return bench_and_report(console, _export(console, artifact_dir, Path(tmp)), opts, merged, json_out, report)
    if export_dir is not None:
        raise UsageError(None, "--export-dir is for a checkpoint argument; the artifacts are already exported")
    bench_and_report(console, artifact_dir, opts, merged, json_out, report)


def _export(console, checkpoint: Path, out: Path) -> Path:
    from dereflect.export.pipeline import export_all

    console.print(f"exporting {checkpoint} to every format this machine builds (fp32, fp16, int8) into {out}", markup=False)
    export_all(checkpoint.resolve(), out, log=lambda line: console.print(f"  {line}", markup=False))
    return out


def bench_and_report(console, folder: Path, opts, merged: list[Path], json_out: Path | None, report: Path | None):
    """Benchmark `folder` (dereflect.bench.bench_folder), print the table and summary; DereflectError
    (exit 1) at the end when a target failed. Returns the BenchResult."""
    from rich.console import Console

    from dereflect.bench.runner import bench_folder, check_passed
    from dereflect.bench.table import print_results

    if not console.is_terminal and console.width < 200:
        console = Console(highlight=False, width=220)  # logs and CI: no wrapping of the wide table

    def log(line: str) -> None:
        console.print(line, markup=False)

    result, document = bench_folder(folder, opts, merged, json_out, report, log=log)
    print_results(console, result, document)
    if json_out is not None:
        log(f"ledger: {json_out} ({len(document['rows'])} rows)")
    if report is not None:
        log(f"report: {report}")
    check_passed(result, folder)
    return result
