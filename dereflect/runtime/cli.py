"""`dereflect remove`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dereflect.errors import NotLandedError


def remove_command(
    inputs: list[str] = typer.Argument(..., help="Images, folders or globs."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    model: str = typer.Option("default", "--model", help="'default' (the shipped student) or a checkpoint/artifact path."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch, onnxruntime, openvino, coreml or tensorrt."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile side in pixels (default: only when the image is too big)."),
) -> None:
    """Remove the reflection from photos.

    Example: dereflect remove photo.jpg holiday/ -o clean/
    """
    raise NotLandedError("`dereflect remove`", "the runtime issue")
