"""`dereflect data ...` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dereflect.errors import NotLandedError

app = typer.Typer(no_args_is_help=True)


@app.command("synth")
def synth_command(
    out: Path = typer.Option(..., "--out", help="Folder to write the sequences into."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of natural photos (default: scikit-image's bundled photos)."),
    sequences: int = typer.Option(8, "--sequences", min=1, help="How many sequences."),
    frames: int = typer.Option(5, "--frames", help="Frames per sequence (3 or 5)."),
    size: int = typer.Option(256, "--size", min=16, help="Frame side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same data)."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also write a contact sheet PNG of a few sequences."),
) -> None:
    """Synthesise multi-view sequences through glass (frames, T and R layers, true flows).

    Example: dereflect data synth --images photos/ --out data/synth --sequences 8 --frames 5 --size 128
    """
    raise NotLandedError("`dereflect data synth`", "the Foundation issue (multi-view synthesis)")
