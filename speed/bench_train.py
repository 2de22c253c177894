"""Training speed per preset: median seconds per optimisation step on this machine.

Builds each stage's trainer on synthetic data (scikit-image photos) and times `train_step` on
prepared batches (data loading excluded), median of several steps after one warm-up.

    .venv/bin/python speed/bench_train.py [--size 128] [--batch 8] [--steps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dereflect.models import create_model, save_checkpoint
from dereflect.train.config import load_config
from dereflect.train.student import StudentTrainer
from dereflect.train.teacher import TeacherTrainer


def time_steps(trainer, steps: int) -> float:
    batch = next(iter(trainer.loader()))
    batch = {k: v.to(trainer.device) for k, v in batch.items()}
    trainer.train_step(batch, 0)  # warm-up
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(batch, i + 1)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.device}; batch {args.batch} at {args.size}px (teacher: 5 frames)"
    )
    common = dict(batch=args.batch, size=args.size, steps=10, val_samples=1, workers=0)
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = save_checkpoint(create_model("teacher-base"), Path(tmp) / "t.safetensors")
        for name in ("teacher-small", "teacher-base"):
            cfg = load_config("teacher", None, dict(model=name, **common))
            sec = time_steps(TeacherTrainer(cfg, Path(tmp) / name, device=args.device, progress=False), args.steps)
            print(f"{name:15s} {sec:7.3f} s/step  {1 / sec:6.2f} it/s")
        for name in ("student-nano", "student-small", "student-base"):
            cfg = load_config("student", None, dict(model=name, real_fraction=0.0, **common))
            sec = time_steps(StudentTrainer(cfg, Path(tmp) / name, teacher=teacher_path, device=args.device, progress=False), args.steps)
            print(f"{name:15s} {sec:7.3f} s/step  {1 / sec:6.2f} it/s  (includes the frozen teacher-base forward for KT)")


if __name__ == "__main__":
    main()
