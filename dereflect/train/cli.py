"""`dereflect train teacher|student`: config (defaults < YAML < options), then the stage's trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)

DATA_HELP = "Folders of photos (synthesis sources), real pairs (blended/ + transmission/) or sequences; repeatable."


def _overrides(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _report(result: dict, out: Path) -> None:
    keys = [
        k
        for k in ("synth_ssim", "synth_id_ssim", "synth_lmse", "synth_id_lmse", "real_ssim", "real_id_ssim", "real_lmse", "real_id_lmse")
        if k in result
    ]
    summary = ", ".join(f"{k} {result[k]:.4f}" for k in keys)
    console.print(f"step {result['step']} ({result['it_s']:.2f} it/s). {summary}")
    console.print(
        f"checkpoints: {out / 'last.safetensors'} (best: {out / 'best.safetensors'}); logs: {out / 'train.csv'}, {out / 'val.csv'}, {out / 'tb'}"
    )


@app.command("teacher")
def teacher_command(
    out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, logs)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help=DATA_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (keys of dereflect.train.config.TrainConfig)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch size (global, over all processes)."),
    size: Optional[int] = typer.Option(None, "--size", help="Crop side (multiple of 8)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames per sequence (3 or 5)."),
    model: Optional[str] = typer.Option(None, "--model", help="teacher-base or teacher-small."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA with AMP when present, else CPU), cpu, cuda."),
) -> None:
    """Train the multi-view teacher on synthesised sequences.

    Example: dereflect train teacher --data photos/ --out runs/teacher --steps 2000
    """
    from dereflect.train.config import load_config
    from dereflect.train.teacher import TeacherTrainer

    cfg = load_config(
        "teacher", config, _overrides(steps=steps, batch=batch, size=size, lr=lr, frames=frames, model=model, seed=seed, workers=workers)
    )
    trainer = TeacherTrainer(cfg, out, data_dirs=data, device=device, resume=resume)
    console.print(f"teacher {cfg.model} on {trainer.device}; data: {trainer.data_description()}")
    result = trainer.run()
    if trainer.is_main:
        _report(result, out)


@app.command("student")
def student_command(
    teacher: Path = typer.Option(..., "--teacher", help="Frozen teacher checkpoint (.safetensors)."),
    out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, logs)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help=DATA_HELP),
    val_pairs: Optional[Path] = typer.Option(None, "--val-pairs", help="Real pairs to validate on (SSIM/LMSE; selects best)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (keys of dereflect.train.config.TrainConfig)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch size (global, over all processes)."),
    size: Optional[int] = typer.Option(None, "--size", help="Crop side (multiple of 8)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    model: Optional[str] = typer.Option(None, "--model", help="student-nano, student-small or student-base."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA with AMP when present, else CPU), cpu, cuda."),
) -> None:
    """Distil the frozen teacher into a single-image student.

    Example: dereflect train student --teacher runs/teacher/best.safetensors --data photos/ --out runs/student
    """
    from dereflect.train.config import load_config
    from dereflect.train.student import StudentTrainer

    cfg = load_config("student", config, _overrides(steps=steps, batch=batch, size=size, lr=lr, model=model, seed=seed, workers=workers))
    trainer = StudentTrainer(cfg, out, teacher=teacher, data_dirs=data, val_pairs=val_pairs, device=device, resume=resume)
    console.print(f"student {cfg.model} on {trainer.device}; data: {trainer.data_description()}")
    result = trainer.run()
    if trainer.is_main:
        _report(result, out)
