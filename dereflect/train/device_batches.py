"""Batches for `synthesis: device`: synthetic steps made on the training device, the rest as before.

Why: on a lent GPU the per-item CPU synthesis in DataLoader workers starved it (round 1: ~10k
samples in 10 minutes). With `synthesis: device` every synthetic step is one call to
`DeviceSynthesizer.batch` (photos held on the device as uint8, whole batch in tensor ops); steps
that StepData draws from another source (real pairs, composites, written sequences) are made from
their items as before, in-process. The source of each step is StepData's own draw, so a run mixes
sources exactly as the CPU path does, and `--resume` gets the same batches (both are functions of
the step alone).

Used by `Trainer._batches` when the config says `synthesis: device`; the synthetic set's photos and
seed are the ones the CPU path would use.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dereflect.data.device_synth import DeviceSynthesizer
from dereflect.data.synth import SynthConfig
from dereflect.train.data import StepData


def make_synthesizer(photos, cfg, device: torch.device, seed: int) -> DeviceSynthesizer:
    """The device synthesiser for a trainer's training photos and config (frames, size, glass label)."""
    return DeviceSynthesizer(
        photos,
        device,
        n_frames=cfg.frames,
        size=cfg.size,
        seed=seed,
        config=SynthConfig(glass_in_label=cfg.glass_in_label),
        augment=True,
        channels_last=device.type == "cuda",
    )


def step_batches(
    data: StepData,
    synth: DeviceSynthesizer,
    start: int,
    stop: int,
    batch: int,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """One batch per step in [start, stop) for DDP rank `rank`: device-made when the step is synthetic."""
    per = batch // world
    device = device or synth.device
    for step in range(start, stop):
        if data.source(step) == "synthetic":
            yield synth.batch(step, per, part=rank)
            continue
        base = step * batch + rank * per
        items = [data[i] for i in range(base, base + per)]
        yield {k: torch.stack([it[k] for it in items]).to(device, non_blocking=True) for k in items[0] if torch.is_tensor(items[0][k])}
