"""`dereflect export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dereflect.errors import NotLandedError


def export_command(
    checkpoint: Path = typer.Argument(..., help="Student checkpoint (.safetensors)."),
    format: str = typer.Option("onnx", "--format", help="onnx, ort, openvino, coreml, tensorrt or all."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration images (default: synthesised)."),
    out: Path = typer.Option(..., "--out", help="Folder for artifacts and manifests."),
) -> None:
    """Convert a student checkpoint for a runtime, quantize it, and check parity against PyTorch.

    Example: dereflect export runs/student/best.safetensors --format all --precision int8 --out artifacts/
    """
    raise NotLandedError("`dereflect export`", "the export-stage issue")
