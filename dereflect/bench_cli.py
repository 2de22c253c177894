"""`dereflect bench`: latency and SSIM/LMSE parity per target; the loop lives in dereflect/bench/.

Answers "which artifact do I ship to which device, and what does it cost in quality?": a console
table, a JSON ledger (rows merge across machines: --merge, and the browser demo's ledger), an
HTML report, and an exit status usable as a CI gate (1 when any target fails its parity budget
or errors; targets this machine cannot run at all, like Core ML off macOS, do not fail it).
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from dereflect.errors import DereflectError, UsageError

BROWSER_LEDGER = Path("runs/bench/browser-ledger.json")


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError:
        raise UsageError(None, f"--sizes must be comma-separated integers (e.g. 256,512), got '{text}'") from None
    if not sizes:
        raise UsageError(None, "--sizes is empty")
    return sizes


def bench_command(
    artifact_dir: Path = typer.Argument(..., help="Folder of exported artifacts, or a student checkpoint to export first."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Paired set (blended/ + transmission/) or synthetic sequence set for PSNR/SSIM/LMSE (default: 4 synthesised pairs)."),
    sizes: str = typer.Option("512,1024", "--sizes", help="Comma-separated square sizes (px) to time."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="JSON ledger to write ({\"rows\": [...]} plus a summary)."),
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
    max_diff: Optional[float] = typer.Option(None, "--max-diff", help="Parity budget override: max |diff| vs PyTorch (default fp32 1e-4)."),
    max_ssim_drop: Optional[float] = typer.Option(None, "--max-ssim-drop", help="Parity budget override: SSIM drop (default fp16 0.002, int8 0.01)."),
    max_lmse_rise: Optional[float] = typer.Option(None, "--max-lmse-rise", help="Parity budget override: LMSE rise (default: not checked)."),
    thumbs: int = typer.Option(6, "--thumbs", help="Pairs shown as before/after thumbnails in the report."),
) -> None:
    """Benchmark every artifact on every backend here: latency, size, memory, SSIM/LMSE parity.

    Exit 1 when any target fails its parity budget (or --min-ssim), so it can gate CI.

    Example: dereflect bench artifacts/ --pairs data/real_pairs --sizes 256,512 --json b.json --report b.html
    """
    from rich.console import Console

    from dereflect.bench.runner import BenchOptions

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=220)
    opts = BenchOptions(
        sizes=parse_sizes(sizes), runs=runs, warmup=warmup, time_cap_s=time_cap, pairs=pairs, max_pairs=max_pairs,
        min_ssim=min_ssim, backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None,
        max_abs_diff=max_diff, max_ssim_drop=max_ssim_drop, max_lmse_rise=max_lmse_rise, thumbs=max(thumbs, 0),
    )
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
    from dereflect.bench.exporting import export_all

    console.print(f"exporting {checkpoint} to every format this machine builds (fp32, fp16, int8) into {out}", markup=False)
    export_all(checkpoint.resolve(), out, log=lambda line: console.print(f"  {line}", markup=False))
    return out


def bench_and_report(console, folder: Path, opts, merged: list[Path], json_out: Path | None, report: Path | None):
    """Run the benchmark on `folder`, merge the `merged` ledgers, print the table and summary,
    write the ledger and report; DereflectError (exit 1) at the end when a target failed.
    `dereflect demo run` calls it too. Returns the BenchResult."""
    from dereflect.bench.ledger import ledger_document, load_ledger, merge_rows, write_ledger
    from dereflect.bench.runner import run_bench

    from rich.console import Console

    if not console.is_terminal and console.width < 200:
        console = Console(highlight=False, width=220)  # logs and CI: no wrapping of the wide table
    merged_rows = [load_ledger(p) for p in merged]
    result = run_bench(folder, opts, log=lambda line: console.print(line, markup=False))
    rows = merge_rows(*merged_rows, result.rows)
    document = ledger_document(
        rows, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), artifacts=str(folder),
        pairs=result.pairs_source, reference=result.reference.label if result.reference else None,
        identity=result.identity.mean, skipped=result.skipped, merged=[str(p) for p in merged],
    )
    print_results(console, result, document)
    if json_out is not None:
        write_ledger(json_out, document)
        console.print(f"ledger: {json_out} ({len(rows)} rows)", markup=False)
    if report is not None:
        from dereflect.bench.report import render_report
        from dereflect.files import write_bytes_atomic

        write_bytes_atomic(report, render_report(document, result, title=f"dereflect bench: {folder}").encode())
        console.print(f"report: {report}", markup=False)
    bad = result.failures
    if bad:
        lines = [f"{r.get('artifact')} on {r['backend']}: {r['status']} ({r.get('reason', '')})" for r in bad]
        raise DereflectError(folder, f"{len(bad)} target(s) did not pass: " + " | ".join(lines))
    return result


def print_results(console, result, document: dict[str, Any]) -> None:
    """The console table of this run, then the reference, the verdicts and the summary lines."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"dereflect bench ({result.pairs_source})")
    cols = ("format", "precision", "backend", "size", "status", "KiB", "median ms", "p90 ms", "model ms", "img/s",
            "MP/s", "peak MB", "PSNR", "SSIM", "LMSE", "dSSIM", "x fp32")
    for c in cols:
        table.add_column(c, justify="left" if c in ("format", "precision", "backend", "status") else "right")

    def f(v: Any, fmt: str) -> str:
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    for r in result.rows:
        style = {"passed": "green", "failed": "red", "error": "red", "reference": "bold"}.get(r["status"], "yellow")
        table.add_row(
            r["format"], r["precision"], r["backend"], str(r["size"]), f"[{style}]{escape(r['status'])}[/{style}]",
            f(r.get("size_bytes") / 1024 if r.get("size_bytes") else None, "{:.0f}"), f(r.get("latency_ms"), "{:.1f}"),
            f(r.get("p90_ms"), "{:.1f}"), f(r.get("model_latency_ms"), "{:.1f}"), f(r.get("img_per_s"), "{:.1f}"),
            f(r.get("mp_per_s"), "{:.2f}"), f(r.get("peak_rss_delta_mb"), "{:.0f}"), f(r.get("psnr"), "{:.2f}"),
            f(r.get("ssim"), "{:.4f}"), f(r.get("lmse"), "{:.4f}"), f(r.get("ssim_drop"), "{:+.5f}"),
            f(r.get("speedup_vs_fp32"), "{:.2f}x"),
        )
    console.print(table)
    ident = result.identity.mean
    line = f"identity (input as output): PSNR {ident['psnr']:.2f} SSIM {ident['ssim']:.4f} LMSE {ident['lmse']:.4f}"
    if result.reference is not None:
        ref = result.reference.quality.mean
        line = f"reference {result.reference.label}: PSNR {ref['psnr']:.2f} SSIM {ref['ssim']:.4f} LMSE {ref['lmse']:.4f}; " + line
    console.print(line, markup=False)
    for m in result.measured:
        if m.status in ("failed", "error", "could not run"):
            console.print(f"{m.status}: {m.label}: {m.reason}", markup=False)
    info = document["summary"]["devices"].get(result.rows[0]["device"], {}) if result.rows else {}
    for size, s in (info.get("ship") or {}).items():
        console.print(f"ship at {size} px: {s.get('artifact')} on {s['backend']} ({s['precision']}): "
                      f"{s['latency_ms']:.1f} ms, SSIM {f(s.get('ssim'), '{:.4f}')} (PyTorch fp32 {f(s.get('ref_ssim'), '{:.4f}')})",
                      markup=False)
    best = info.get("int8_vs_fp32_best")
    if best:
        console.print(f"INT8 vs fp32 on the best backend ({best['backend']}, {best['format']}) at {best['size']} px: "
                      f"{best['fp32_ms']:.1f} ms -> {best['ms']:.1f} ms = {best['speedup']:.2f}x", markup=False)
    else:
        console.print("INT8 vs fp32: no backend here ran both precisions", markup=False)
