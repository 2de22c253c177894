"""`dereflect eval MODEL --pairs DIR`: the command; the scoring is the package's (dereflect.evaluate)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from dereflect.errors import DereflectError, os_reason
from dereflect.evaluate import METRIC_NAMES, EvalResult, evaluate, load_predict
from dereflect.files import check_writable, write_bytes_atomic


def _table(result: EvalResult, title: str):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("image")
    for label in ("PSNR (dB)", "SSIM", "LMSE", "NCC"):  # METRIC_NAMES, in order
        table.add_column(label, justify="right")
    fmt = {"psnr": "{:.2f}", "ssim": "{:.4f}", "lmse": "{:.4f}", "ncc": "{:.4f}"}
    table.add_column("GT shift (px)", justify="right")
    for row in result.rows:
        table.add_row(row["name"], *(fmt[k].format(row[k]) for k in METRIC_NAMES), f"{row['gt_shift']:.2f}")
    table.add_section()
    mean = result.mean
    table.add_row(f"mean ({len(result.rows)})", *(fmt[k].format(mean[k]) for k in METRIC_NAMES), "", style="bold")
    n_aligned = len(result.aligned_rows)
    if n_aligned < len(result.rows):
        aligned = result.aligned_mean
        table.add_row(f"mean, aligned GT ({n_aligned})", *(fmt[k].format(aligned[k]) for k in METRIC_NAMES), "", style="bold")
    return table


def eval_command(
    model: str = typer.Argument(..., help="Checkpoint, exported artifact, or 'identity' (input as output)."),
    pairs: Path = typer.Option(..., "--pairs", help="Paired set (blended/ + transmission/) or synthetic sequence set."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write per-image and mean scores as JSON."),
) -> None:
    """Score MODEL on --pairs: PSNR, SSIM, LMSE, NCC per image and in the mean.

    Example: dereflect eval identity --pairs data/real_pairs --json scores.json
    """
    from rich.console import Console

    if json_out is not None:
        check_writable(json_out, "--json")  # before minutes of scoring, not after
    predict = load_predict(model)
    stderr = Console(stderr=True, highlight=False, soft_wrap=True)

    def report(exc: DereflectError) -> None:
        stderr.print(f"error: {exc}", markup=False)

    def skipped(message: str) -> None:
        stderr.print(f"warning: {message}", markup=False)

    result = evaluate(predict, pairs, progress=sys.stderr.isatty(), on_error=report, on_skip=skipped)

    if result.rows:
        Console(highlight=False, soft_wrap=True).print(_table(result, f"{model} on {pairs}"))
    if json_out is not None:
        text = json.dumps(result.to_json(model, pairs), indent=2, allow_nan=False) + "\n"
        try:
            write_bytes_atomic(json_out, text.encode())
        except OSError as exc:
            raise DereflectError(json_out, f"could not write the scores ({os_reason(exc)})") from None
    if result.failures:
        raise typer.Exit(code=1)
