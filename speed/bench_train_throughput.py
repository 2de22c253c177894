"""Training throughput per model: samples/s with synthesis on the training device + one optimisation step.

Why: round 1 on a lent H200 fed the GPU from CPU DataLoader workers that synthesised every sequence
one at a time (data/synth.py); the GPU waited on them (~10k samples in 10 minutes; teacher-base 4.0
it/s at batch 16, 192 px = 64 samples/s). dereflect.data.device_synth makes whole batches on the
device. This prints, per device (CPU, and CUDA when present):

- synthesis only: the old per-item path (SyntheticSequences[i], what one DataLoader worker does) and
  DeviceSynthesizer.batch, in samples/s;
- per model: one optimisation step alone on a ready batch (forward + backward of an L1 loss on the
  transmission, AdamW step; bf16 autocast on CUDA, as the trainers' amp; with --trainer, the real
  TeacherTrainer/StudentTrainer.train_step with all their losses, students with KT), the same step fed by
  DeviceSynthesizer.batch every step (the new pipeline: a loop of --steps steps, mean), on CUDA also
  fed by DeviceSynthesizer.batches (next batch made on a side stream, overlapping the step), and the
  old pipeline's bound min(step alone, workers x per-item rate) (workers = --workers, default the
  CPU count).

"Alone" and "synthesis only" are medians of --steps after --warmup, loops are means over --steps
after a warm-up loop; torch.cuda.synchronize() brackets every timing on CUDA.

    .venv/bin/python speed/bench_train_throughput.py [--size 256] [--batch 16] [--steps 5] [--devices cpu,cuda]
        [--models teacher-base,student-nano] [--photos DIR] [--channels-last] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dereflect.bench.machine import device_name
from dereflect.data.datasets import SyntheticSequences
from dereflect.data.device_synth import DeviceSynthesizer
from dereflect.data.photos import load_photos
from dereflect.models import count_params, create_model, list_models


def default_models() -> list[str]:
    """The teachers the recipe trains and every student preset there is (MobileNetV2 ones included)."""
    names = list_models()
    return [m for m in ("teacher-base", "teacher-small") if m in names] + [m for m in names if m.startswith("student-")]


def median_seconds(fn: Callable[[int], object], steps: int, warmup: int, device: torch.device) -> float:
    """Median wall seconds of fn(step), synchronising CUDA so queued kernels are counted."""
    for k in range(warmup):
        fn(10**6 + k)  # warm-up steps of their own (step numbers must be >= 0)
    times = []
    for k in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn(k)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loop_seconds(run: Callable[[int, int], None], steps: int, warmup: int, device: torch.device) -> float:
    """Mean wall seconds per step of run(start, stop) over `steps` steps after a warm-up run: the
    rate of a training loop, where queued work of one step may overlap the next."""
    run(10**6, 10**6 + warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run(0, steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def old_rate(photos: list[np.ndarray], size: int, frames: int, items: int) -> float:
    """Samples/s of the per-item CPU path in this process (one DataLoader worker's rate)."""
    ds = SyntheticSequences(photos, n_frames=frames, size=size, length=items + 1, seed=0)
    sec = median_seconds(lambda k: ds[min(k, items)], items, 1, torch.device("cpu"))
    return 1.0 / sec


class StepRunner:
    """One optimisation step of `name` on a batch dict: forward, L1 on the transmission, backward, AdamW."""

    def __init__(self, name: str, device: torch.device, channels_last: bool) -> None:
        self.name, self.device = name, device
        self.model = create_model(name).to(device).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.teacher = name.startswith("teacher")

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        x = batch["frames"] if self.teacher else batch["input"]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.model(x)
        pred = out["transmission"] if isinstance(out, dict) else out
        loss = (pred.float() - batch["transmission"]).abs().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class TrainerStep:
    """The real trainers' train_step (all their losses; students with KT from a fresh teacher-base,
    so the teacher's forward on `frames` is in the step) on a DeviceSynthesizer batch."""

    def __init__(self, name: str, device: torch.device, args: argparse.Namespace, tmp: Path) -> None:
        from dereflect.models import save_checkpoint
        from dereflect.train.config import load_config
        from dereflect.train.student import StudentTrainer
        from dereflect.train.teacher import TeacherTrainer

        common = dict(model=name, batch=args.batch, size=args.size, frames=args.frames, steps=10, val_samples=1, workers=0)
        if name.startswith("teacher"):
            self.trainer = TeacherTrainer(load_config("teacher", None, common), tmp / name, device=str(device), progress=False)
        else:
            teacher = save_checkpoint(create_model("teacher-base"), tmp / "teacher.safetensors")
            self.trainer = StudentTrainer(
                load_config("student", None, dict(real_fraction=0.0, **common)),
                tmp / name,
                teacher=teacher,
                device=str(device),
                progress=False,
            )
        self.model = self.trainer.model
        self.calls = 0

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        self.trainer.train_step(batch, self.calls)
        self.calls += 1


def run_device(device: torch.device, args: argparse.Namespace, photos_u8: list[np.ndarray], old: float) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"\n== {device}: {torch.cuda.get_device_name(device)} ==")
    else:
        print(f"\n== {device}: {torch.get_num_threads()} torch thread(s) ==")
    synth = DeviceSynthesizer(photos_u8, device, n_frames=args.frames, size=args.size, seed=0, channels_last=args.channels_last)
    sec = median_seconds(lambda k: synth.batch(k, args.batch), args.steps, args.warmup, device)
    new = args.batch / sec
    print(
        f"synthesis only, samples/s at {args.size} px, {args.frames} frames: old per-item {old:8.1f} (one worker; "
        f"x{args.workers} workers <= {old * args.workers:.1f})   device batch {args.batch}: {new:8.1f}   "
        f"({new / old:.1f}x one worker; photo buffer {synth.memory_bytes / 2**20:.0f} MiB)"
    )
    if not args.models:
        return
    head = f"{'model':18s} {'params':>8s} {'step alone':>11s} {'synth+step':>11s} {'it/s':>7s} {'old bound':>10s}"
    if device.type == "cuda":
        head += f" {'overlapped':>11s} {'it/s':>7s}"
    print(head + "  (samples/s)")
    with tempfile.TemporaryDirectory(prefix="bench_train_throughput_") as tmp:
        for name in args.models:
            print(model_line(name, synth, device, args, old, Path(tmp)))
            if device.type == "cuda":
                torch.cuda.empty_cache()


def model_line(name: str, synth: DeviceSynthesizer, device: torch.device, args: argparse.Namespace, old: float, tmp: Path) -> str:
    """One table row: step alone, synth + step, (CUDA) overlapped, old-path bound, in samples/s."""
    try:
        step = TrainerStep(name, device, args, tmp) if args.trainer else StepRunner(name, device, args.channels_last)
    except Exception as exc:  # noqa: BLE001 - a preset that cannot be built here (e.g. needs weights) is reported, not fatal
        return f"{name:18s} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    ready = synth.batch(2 * 10**6, args.batch)
    alone = args.batch / median_seconds(lambda k: step(ready), args.steps, args.warmup, device)
    fused_sec = loop_seconds(lambda a, b: [step(synth.batch(k, args.batch)) for k in range(a, b)], args.steps, args.warmup, device)
    line = (
        f"{name:18s} {count_params(step.model) / 1e6:7.2f}M {alone:11.1f} {args.batch / fused_sec:11.1f} "
        f"{1 / fused_sec:7.2f} {min(alone, old * args.workers):10.1f}"
    )
    if device.type == "cuda":  # the same loop with the next batch made on a side stream
        try:
            sec = loop_seconds(lambda a, b: [step(x) for _, x in synth.batches(a, b, args.batch)], args.steps, args.warmup, device)
            line += f" {args.batch / sec:11.1f} {1 / sec:7.2f}"
        except Exception as exc:  # noqa: BLE001 - report, keep the table
            line += f"  overlapped: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda when available)")
    ap.add_argument(
        "--models", default=None, help="comma-separated presets (default: teachers base/small + every student; none: synthesis only)"
    )
    ap.add_argument("--photos", type=Path, default=None, help="folder of photos (default: scikit-image's bundled ones)")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--old-items", type=int, default=8, help="items timed for the per-item CPU path")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers the old path would have")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--trainer", action="store_true", help="time the real trainers' train_step instead of a plain L1 step")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.models = [] if args.models == "none" else args.models.split(",") if args.models else default_models()
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    photos = load_photos(args.photos, max_side=args.max_side)
    photos_u8 = [np.round(p * 255.0).astype(np.uint8) for p in photos]
    print(
        f"machine: {device_name()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}; "
        f"{len(photos)} photos (long side <= {args.max_side}); batch {args.batch} at {args.size} px, "
        f"{args.frames}-frame sequences; median of {args.steps} steps after {args.warmup} warm-up"
    )
    old = old_rate(photos, args.size, args.frames, args.old_items)
    for dev in devices:
        run_device(torch.device(dev), args, photos_u8, old)


if __name__ == "__main__":
    main()
