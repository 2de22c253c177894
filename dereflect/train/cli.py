"""`dereflect train teacher|student` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dereflect.errors import NotLandedError

app = typer.Typer(no_args_is_help=True)


@app.command("teacher")
def teacher_command(
    out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, logs)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Photo, sequence or paired folders."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Train the multi-view teacher.

    Example: dereflect train teacher --data photos/ --out runs/teacher --steps 2000
    """
    raise NotLandedError("`dereflect train teacher`", "the networks-and-training issue")


@app.command("student")
def student_command(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher checkpoint (.safetensors)."),
    out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, logs)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Photo, sequence or paired folders."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Distil the frozen teacher into a single-image student.

    Example: dereflect train student --teacher runs/teacher/best.safetensors --data photos/ --out runs/student
    """
    raise NotLandedError("`dereflect train student`", "the networks-and-training issue")
