"""The benchmark's console table and summary lines (rich), shared by `dereflect bench` and `dereflect demo run`."""

from __future__ import annotations

from typing import Any

from dereflect.bench.report import COLUMNS


def print_results(console, result, document: dict[str, Any]) -> None:
    """The console table of this run, then the reference, the verdicts and the summary lines."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"dereflect bench ({result.pairs_source})")
    cols = (*COLUMNS, "x fp32")
    for c in cols:
        table.add_column(c, justify="left" if c in ("format", "precision", "backend", "status") else "right")

    def f(v: Any, fmt: str) -> str:
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    for r in result.rows:
        style = {"passed": "green", "failed": "red", "error": "red", "reference": "bold"}.get(r["status"], "yellow")
        table.add_row(
            r["format"],
            r["precision"],
            r["backend"],
            str(r["size"]),
            f"[{style}]{escape(r['status'])}[/{style}]",
            f(r.get("size_bytes") / 1024 if r.get("size_bytes") else None, "{:.0f}"),
            f(r.get("latency_ms"), "{:.1f}"),
            f(r.get("p90_ms"), "{:.1f}"),
            f(r.get("model_latency_ms"), "{:.1f}"),
            f(r.get("img_per_s"), "{:.1f}"),
            f(r.get("mp_per_s"), "{:.2f}"),
            f(r.get("peak_rss_delta_mb"), "{:.0f}"),
            f(r.get("psnr"), "{:.2f}"),
            f(r.get("ssim"), "{:.4f}"),
            f(r.get("lmse"), "{:.4f}"),
            f(r.get("ssim_drop"), "{:+.5f}"),
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
        console.print(
            f"ship at {size} px: {s.get('artifact')} on {s['backend']} ({s['precision']}): "
            f"{s['latency_ms']:.1f} ms, SSIM {f(s.get('ssim'), '{:.4f}')} (PyTorch fp32 {f(s.get('ref_ssim'), '{:.4f}')})",
            markup=False,
        )
    best = info.get("int8_vs_fp32_best")
    if best:
        console.print(
            f"INT8 vs fp32 on the best backend ({best['backend']}, {best['format']}) at {best['size']} px: "
            f"{best['fp32_ms']:.1f} ms -> {best['ms']:.1f} ms = {best['speedup']:.2f}x",
            markup=False,
        )
    else:
        console.print("INT8 vs fp32: no backend here ran both precisions", markup=False)
