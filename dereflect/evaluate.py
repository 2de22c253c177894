"""`dereflect eval`: score a model on a paired set with the literature's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dereflect.errors import NotLandedError


def eval_command(
    model: str = typer.Argument(..., help="Checkpoint, exported artifact, or 'identity' (input as output)."),
    pairs: Path = typer.Option(..., "--pairs", help="Paired set (blended/ + transmission/) or synthetic sequence set."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write per-image and mean scores as JSON."),
) -> None:
    """Score MODEL on --pairs: PSNR, SSIM, LMSE, NCC per image and in the mean.

    Example: dereflect eval identity --pairs data/real_pairs --json scores.json
    """
    raise NotLandedError("`dereflect eval`", "the Foundation issue (metrics)")
