"""`create_model(name)` over a registry of presets, and safetensors checkpoints that rebuild themselves.

A checkpoint is two files: `NAME.safetensors` (weights only, never pickle) and `NAME.json` (model
name, full config, and whatever the trainer adds: step, data description, git commit, metrics).
The config is also stored in the safetensors header, so the weights file alone is enough to load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from dereflect.errors import DereflectError, os_reason
from dereflect.files import atomic_output
from dereflect.models.burst import BurstTeacher
from dereflect.models.burst_student import BurstStudent, BurstStudentConfig
from dereflect.models.mobile_student import MobileStudent, MobileStudentConfig
from dereflect.models.student import Student, StudentConfig
from dereflect.models.teacher import Teacher, TeacherConfig

# name -> (class, config class, preset values). README lists params and GMACs at 512x512.
PRESETS: dict[str, tuple[type[nn.Module], type, dict[str, Any]]] = {
    "student-nano": (Student, StudentConfig, dict(widths=(8, 16, 24, 64), blocks=(0, 1, 2), dyn_channels=(8, 12, 32), halluc_blocks=1)),
    "student-small": (Student, StudentConfig, dict(widths=(16, 32, 48, 64), blocks=(1, 1, 2), dyn_channels=(16, 24, 32), halluc_blocks=1)),
    "student-base": (Student, StudentConfig, dict(widths=(24, 48, 96, 128), blocks=(1, 2, 3), dyn_channels=(32, 48, 64), halluc_blocks=2)),
    # ImageNet MobileNetV2 encoder (models/backbones.py): the real-time student and the quality student.
    "student-mnv2-rt": (MobileStudent, MobileStudentConfig, dict(stem_width=8, dec_widths=(16, 24, 32, 48), dyn_channels=(8, 12, 16))),
    "student-mnv2-hq": (
        MobileStudent,
        MobileStudentConfig,
        dict(stem_width=24, dec_widths=(32, 48, 64, 96), dyn_channels=(16, 24, 32), halluc_blocks=2),
    ),
    # The real-time student's decoder on EfficientNet-Lite0 (5x5 depthwise stages, 40/112-channel taps): the
    # encoder candidate issue 13 asked to pick by quality per ms at INT8 (results/README.md, round 8).
    "student-lite0-rt": (
        MobileStudent,
        MobileStudentConfig,
        dict(backbone="efficientnet_lite0", stem_width=8, dec_widths=(16, 24, 32, 48), dyn_channels=(8, 12, 16)),
    ),
    "teacher-base": (Teacher, TeacherConfig, dict(widths=(24, 48, 64, 96), blocks=(1, 1, 2), dyn_channels=(32, 48, 64))),
    # Never shipped, so heavy: frozen HED-VGG16 + MobileNetV2 features of every frame on top of its own (issue 13).
    "teacher-privileged": (
        Teacher,
        TeacherConfig,
        dict(widths=(24, 48, 64, 96), blocks=(1, 1, 2), dyn_channels=(32, 48, 64), privileged=True),
    ),
    "teacher-small": (Teacher, TeacherConfig, dict(widths=(16, 32, 48, 64), blocks=(1, 1, 1), dyn_channels=(16, 32, 48))),
    # The teacher as a shipped burst model (models/burst.py): frames in, clean middle frame out; same weights as teacher-base.
    "burst-base": (BurstTeacher, TeacherConfig, dict(widths=(24, 48, 64, 96), blocks=(1, 1, 2), dyn_channels=(32, 48, 64))),
    # The phone-sized burst model (models/burst_student.py): student-mnv2-rt's widths, registered frames in,
    # multi-frame cues (reference - min, reference - mean) beside the reference; no flows, no grid sampling.
    "burst-mnv2": (BurstStudent, BurstStudentConfig, dict(stem_width=8, dec_widths=(16, 24, 32, 48), dyn_channels=(8, 12, 16))),
}


def list_models() -> list[str]:
    return sorted(PRESETS)


def training_stage(name: str) -> str | None:
    """The `dereflect train` stage that trains preset `name`, by its class: "teacher" for the multi-frame
    teachers, "student" for the students, including the burst student (a MobileStudent fed registered
    frames); None where no stage trains it (burst-base ships a trained teacher-base's weights)."""
    cls = PRESETS[name][0]
    if issubclass(cls, BurstTeacher):
        return None
    return "teacher" if issubclass(cls, Teacher) else "student"


def _build(name: str, config: dict[str, Any]) -> nn.Module:
    cls, cfg_cls, _ = PRESETS[name]
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise DereflectError(None, f"{name}: unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    model = cls(cfg_cls(**clean))
    model.model_name = name  # type: ignore[attr-defined]
    return model


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a preset by name (e.g. "student-nano"), with config fields overridden by keyword."""
    if name not in PRESETS:
        raise DereflectError(None, f"unknown model '{name}'; choose one of {', '.join(list_models())}")
    return _build(name, {**PRESETS[name][2], **overrides})


def model_config(model: nn.Module) -> dict[str, Any]:
    return dataclasses.asdict(model.config)  # type: ignore[arg-type]


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], **meta: Any) -> Path:
    """Write `path` (.safetensors) and its JSON sidecar atomically; returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError("model has no model_name: build it with create_model()")
    info = {"model": name, "config": model_config(model), **meta}
    header = {"dereflect": json.dumps({"model": name, "config": info["config"]})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Serialised in memory, then written by Python: a full disk is then an OSError naming ENOSPC (not a
    # SafetensorError string), and the temp file keeps the mode atomic_output gave it (save_file
    # re-creates the file 0600).
    blobs = (
        (path, safetensors_bytes(state, metadata=header)),
        (path.with_suffix(".json"), json.dumps(info, indent=2, default=str).encode()),
    )
    for target, data in blobs:
        try:
            with atomic_output(target) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise DereflectError(
                target, f"could not write the checkpoint ({os_reason(exc)}); the previous file, if any, is unchanged"
            ) from None
    return path


def read_checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Model name and config from the safetensors header (plus the JSON sidecar's extras)."""
    path = Path(path)
    if not path.is_file():
        raise DereflectError(path, "no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = (fh.metadata() or {}).get("dereflect")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DereflectError(path, f"not a readable safetensors checkpoint ({exc})") from None
    if header is None:
        raise DereflectError(path, "safetensors file has no dereflect model header (not a dereflect checkpoint)")
    info = json.loads(header)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            extra = json.loads(sidecar.read_text())
        except json.JSONDecodeError as exc:
            raise DereflectError(sidecar, f"corrupt checkpoint JSON ({exc})") from None
        info = {**extra, **info}
    return info


def load_checkpoint(path: str | os.PathLike[str], expect: str | None = None) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strict).

    `expect` = "student" or "teacher" refuses the other kind with a clear error.
    """
    path = Path(path)
    info = read_checkpoint_info(path)
    name = info.get("model", "")
    if name not in PRESETS:
        raise DereflectError(path, f"checkpoint is for unknown model '{name}'")
    if expect is not None and not name.startswith(expect):
        raise DereflectError(path, f"expected a {expect} checkpoint, got '{name}'")
    model = _build(name, info["config"])
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DereflectError(path, f"corrupt weights ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DereflectError(path, f"weights do not match {name}: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
    model.checkpoint_info = info  # type: ignore[attr-defined]
    return model.eval()


def shipped_weights(name: str) -> Path | None:
    """A model shipped in dereflect/weights by its name ("student-nano", "burst-base"), or None."""
    from importlib import resources

    path = Path(str(resources.files("dereflect") / "weights")) / f"{name}.safetensors"
    return path if "/" not in name and "\\" not in name and path.is_file() else None


def load_deployable(path: str | os.PathLike[str]) -> nn.Module:
    """A checkpoint that can ship: a student (one photo in) or a burst model (frames in, models/burst.py).

    A training teacher is refused: its forward returns a dict (layers, flows, D), not one image; its
    weights ship as the burst model (burst-base loads a teacher-base's weights unchanged)."""
    name = read_checkpoint_info(path).get("model", "")
    if name in PRESETS and hasattr(PRESETS[name][0], "input_frames"):
        return load_checkpoint(path)
    return load_checkpoint(path, expect="student")  # refuses a training teacher by name, before reading its weights


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, size: int = 512, frames: int | None = None) -> float:
    """Multiply-accumulates (x1e9) of one forward pass at size x size, via torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    shape = (1, frames, 3, size, size) if frames else (1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(shape))
    return counter.get_total_flops() / 2e9
