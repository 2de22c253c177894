"""Training configuration: dataclass defaults, a YAML file on top, CLI overrides on top of that.

Unknown keys are errors (a typo must not silently train the wrong thing). The resolved config
is written into the run folder and into every checkpoint's JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dereflect.errors import DereflectError


@dataclass
class LossWeights:
    """The paper's alpha, beta, gamma, zeta (values are ours; the paper does not state them)."""

    rec: float = 1.0  # L_R: L1 + gradient L1 on T (and half of it on R for the teacher)
    perc: float = 0.1  # L_P: VGG features
    fd: float = 0.2  # L_FD (teacher): gradient exclusion + feature orthogonality
    vs: float = 0.5  # L_VS (teacher): re-compose the middle frame from warped neighbour layers
    flow: float = 0.05  # flow supervision (teacher, synthetic data: true flows known)
    layers: float = 0.5  # per-frame T_i/R_i supervision (teacher, synthetic data)
    gan: float = 0.01  # L_G + L_D (student)
    kt: float = 1.0  # L_T (student): distillation of D
    ssim: float = 0.0  # structure term (1 - SSIM, the benchmarks' SSIM) on T (student)


@dataclass
class TrainConfig:
    stage: str = "teacher"  # "teacher" or "student"
    model: str = "teacher-base"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {use_flow: false} for ablations
    steps: int = 2000
    batch: int = 8
    size: int = 128  # training crop side (multiple of 8)
    frames: int = 5  # frames per synthetic sequence (teacher input; the student sees the middle one)
    lr: float = 2e-4
    lr_min_factor: float = 0.05  # cosine decay to lr * this
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    workers: int = 0  # DataLoader workers (items are pure functions of their index: order is fixed)
    real_fraction: float = 0.5  # student: share of steps drawn from real pairs when --data has some
    sequence_fraction: float = 0.5  # share of steps drawn from written sequence folders when --data has some
    composite_fraction: float = 0.0  # student: share of steps drawn from a reflection bank (--data BANK), on the synthetic side
    # burst student: after registration, each neighbour gets a random residual warp of about this many
    # pixels (rotation, zoom, a smooth parallax-like field) on most training sequences, because on real
    # bursts a global translation leaves the scene misaligned (depth, rotation): the cues then hold scene
    # edges the model must keep (train/data.RegisteredSequences).
    burst_residual_px: float = 0.0
    val_fraction: float = 0.1  # photos held out for synthetic validation
    val_samples: int = 16
    val_every: int = 200
    ckpt_every: int = 100
    log_every: int = 10
    perceptual: str = "auto"  # auto | hed | torchvision | off
    synthesis: str = "cpu"  # cpu: per item in DataLoader workers; device: whole batches on the training device (train/device_batches.py)
    glass_in_label: bool = True  # synthetic T label seen through the glass (teacher: frames = T + R); False: as real pairs' GT (students)
    perceptual_layers: int = 5  # VGG layers used by L_P (relu1_2 .. relu5_2): 3 stops at relu3_2, ~half the cost on a CPU
    gan: str = "relativistic"  # relativistic | hinge | off (student)
    d_lr: float = 1e-4
    amp: bool = True  # bf16 autocast on CUDA
    init: str = ""  # start from this checkpoint's weights (same model); not used when resuming
    time_budget_s: float = 0.0  # > 0: after `probe_steps`, shrink `steps` so the run fits this many seconds
    probe_steps: int = 30
    max_photo_side: int = 512
    loss: LossWeights = field(default_factory=LossWeights)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "teacher": dict(stage="teacher", model="teacher-base"),
    "student": dict(stage="student", model="student-nano"),
}


def _merge(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    loss_known = {f.name for f in dataclasses.fields(LossWeights)}
    for key, value in values.items():
        if key not in known:
            raise DereflectError(source, f"unknown config key '{key}' (known: {', '.join(sorted(known))})")
        if key == "loss":
            if not isinstance(value, dict):
                raise DereflectError(source, "'loss' must be a mapping of loss weights")
            bad = sorted(set(value) - loss_known)
            if bad:
                raise DereflectError(source, f"unknown loss weight '{bad[0]}' (known: {', '.join(sorted(loss_known))})")
            cfg.loss = dataclasses.replace(cfg.loss, **{k: float(v) for k, v in value.items()})
        elif key == "model_overrides":
            cfg.model_overrides = {**cfg.model_overrides, **dict(value or {})}
        else:
            setattr(cfg, key, value)
    return cfg


def load_config(stage: str, path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults for the stage, then the YAML file, then non-None CLI overrides; validated."""
    cfg = TrainConfig(**STAGE_DEFAULTS[stage])
    if path is not None:
        if not Path(path).is_file():
            raise DereflectError(path, "no such config file")
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise DereflectError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise DereflectError(path, "a config file must be a mapping of keys to values")
        cfg = _merge(cfg, values, str(path))
    cfg = _merge(cfg, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line")
    if cfg.stage != stage:
        raise DereflectError(path, f"config is for stage '{cfg.stage}', not '{stage}'")
    if cfg.size % 8:
        raise DereflectError(path, f"size {cfg.size} must be a multiple of 8")
    if cfg.synthesis not in ("cpu", "device"):
        raise DereflectError(path, f"synthesis must be 'cpu' or 'device', got '{cfg.synthesis}'")
    if cfg.frames < 2:
        raise DereflectError(path, f"frames must be >= 2 (got {cfg.frames})")
    from dereflect.models.registry import PRESETS, training_stage  # torch: the trainers import it anyway

    if cfg.model not in PRESETS:
        raise DereflectError(path, f"unknown model '{cfg.model}'; choose one of {', '.join(sorted(PRESETS))}")
    if training_stage(cfg.model) != stage:
        raise DereflectError(path, f"model '{cfg.model}' is not a {stage}")
    return cfg


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a resolved config (from a run folder or checkpoint JSON)."""
    values = dict(values)
    loss = LossWeights(**values.pop("loss", {}))
    return TrainConfig(**values, loss=loss)
