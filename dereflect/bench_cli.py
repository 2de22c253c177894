"""`dereflect bench`: latency and SSIM/LMSE parity per target (the runner lives in benchmarks/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dereflect.errors import NotLandedError


def bench_command(
    artifact_dir: Path = typer.Argument(..., help="Folder of exported artifacts (or a checkpoint)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Paired set for SSIM/LMSE."),
    sizes: str = typer.Option("512,1024", "--sizes", help="Comma-separated square sizes."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="JSON ledger to write."),
    report: Optional[Path] = typer.Option(None, "--report", help="HTML report to write."),
) -> None:
    """Benchmark every artifact on every backend here: latency, size, SSIM/LMSE parity.

    Example: dereflect bench artifacts/ --pairs data/real_pairs --sizes 256,512 --json b.json --report b.html
    """
    raise NotLandedError("`dereflect bench`", "the benchmark-runner issue")
