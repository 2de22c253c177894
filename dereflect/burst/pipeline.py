"""Burst removal: the burst model on the chosen frames, the reference frame's correction at full resolution.

How full resolution is reached (the honest version): the model runs once on the frames at a working
resolution (long side WORK_SIDE = 512 px, never enlarged), where its flow nets' reach and its training
scale hold (it was trained on 192-px crops of photos of at most 512 px; a 12 MP frame would put hand
shake far outside the flows it learned). What it removes there, `T_work - reference_work`, is
upsampled bilinearly and subtracted from the full-resolution reference, so the scene's detail is
the photo's own and only the reflection estimate is at the working resolution. It is not tiled:
tiles of a moving sequence would cut the layers' motion at every seam. Frames shifted beyond the
synthesis' motion range are first moved back by the excess (an integer global translation at the
working resolution) so the far plane's motion stays in range.

A fixed-frame graph (the ONNX export takes 5 frames) gets 3 or 4 frames by repeating neighbours:
the model pools neighbours by mean and max, so [a, b, ref, a, b] equals [a, ref, b] exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.burst.frames import Burst
from dereflect.errors import DereflectError, UsageError
from dereflect.images import from_float, to_float

WORK_SIDE = 512
#: The synthesis moves the far plane up to 14 px of 256 between the middle and an end frame.
MOTION_RANGE = 14.0 / 256.0
#: `--model default` in burst mode: the first of these that is shipped (burst-mnv2: the phone-sized
#: model, models/burst_student.py; burst-base: the multi-view teacher).
DEFAULT_BURSTS = ("burst-mnv2", "burst-base")


def weights_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("dereflect") / "weights"))


def default_burst() -> str:
    shipped = shipped_burst_models()
    return next((name for name in DEFAULT_BURSTS if name in shipped), DEFAULT_BURSTS[-1])


def shipped_burst_models() -> list[str]:
    return sorted(p.stem for p in weights_dir().glob("burst-*.safetensors"))


def input_frames(manifest: dict[str, Any] | None) -> int | None:
    """Frames per sample of an exported model: the manifest's input shape (N, T, 3, H, W) -> T; None for one image."""
    from dereflect.runtime.backends.base import input_frames as manifest_frames

    return manifest_frames(manifest or {})


@dataclass
class BurstModel:
    """A loaded burst model on one backend: `infer((1,T,3,H,W))` -> (1,3,H,W)."""

    impl: Any
    frames: int
    label: str
    registered: bool = False  # the model wants frames moved onto the reference first (models/burst_student.py)

    @property
    def backend(self) -> str:
        return self.impl.name

    @property
    def multiple(self) -> int:
        return int(self.impl.multiple)

    def describe(self) -> str:
        return f"{self.backend}: {self.impl.detail or self.backend} | model {self.label} ({self.frames} frames in)"


def _from_checkpoint(path: Path, device: str | None) -> BurstModel:
    from dereflect.models import create_model, load_checkpoint
    from dereflect.runtime.backends.torch_backend import TorchBackend

    net = load_checkpoint(path)
    name = getattr(net, "model_name", "")
    if not hasattr(net, "input_frames"):
        if name.startswith("teacher-") and not net.config.privileged:
            burst = create_model("burst-base", **{k: v for k, v in net.checkpoint_info["config"].items() if k != "privileged"})
            burst.load_state_dict(net.state_dict())
            net, name = burst.eval(), f"{name} as a burst model"
        else:
            raise DereflectError(
                path, f"'{name}' takes one photo, not a burst: give a burst model ({', '.join(shipped_burst_models())}) or drop --burst"
            )
    registered = bool(getattr(net, "registered_input", False))
    return BurstModel(TorchBackend(net, device=device), int(net.input_frames), f"{path.name} ({name})", registered)


def load_model(
    model: str = "default", backend: str = "auto", *, verify: bool = True, precision: str | None = None, device: str | None = None
) -> BurstModel:
    """`--model` in burst mode: 'default' (`default_burst()`), a shipped name, a burst checkpoint
    (a teacher checkpoint is taken as its burst model) or an exported burst artifact / export folder."""
    name = default_burst() if model == "default" else model
    shipped = weights_dir() / f"{name}.safetensors"
    path = shipped if name.startswith("burst-") and "/" not in name and shipped.is_file() else Path(name).expanduser()
    if not path.exists():
        raise DereflectError(path, f"no such burst model (shipped: {', '.join(shipped_burst_models()) or 'none'})")
    if path.suffix.lower() == ".safetensors":
        if backend not in ("auto", "torch"):
            raise UsageError(
                None, f"{path}: a checkpoint runs on the torch backend; export it first (dereflect export {name} --format onnx --out DIR)"
            )
        return _from_checkpoint(path, device)
    from dereflect.runtime.backends import get_backend
    from dereflect.runtime.resolve import resolve

    ref, backend_name = resolve(path, backend, precision, verify)
    frames = input_frames(ref.manifest)
    if ref.manifest is None and ref.kind == "checkpoint":
        return _from_checkpoint(ref.path, device)
    if frames is None:
        raise DereflectError(ref.path, "not a burst model (its input is one image): give a burst export or drop --burst")
    impl = get_backend(backend_name)(ref.path, ref.manifest, device=device)
    registered = (ref.manifest.get("constraints") or {}).get("frame_alignment") == "translation"
    return BurstModel(impl, frames, ref.label, registered)


# ------------------------------------------------------------------------------ running


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 HWC -> (h, w), bilinear per channel with Pillow (antialiased when shrinking; no torch:
    an exported burst model runs in the slim install)."""
    from PIL import Image

    h, w = size
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(values[..., c], dtype=np.float32)).resize((w, h), Image.Resampling.BILINEAR))
        for c in range(values.shape[2])
    ]
    return np.stack(planes, axis=-1)


def _shrink(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HWC uint8/uint16 -> float32 HWC [0,1] at (h, w), antialiased."""
    values = to_float(pixels)
    return values if values.shape[:2] == size else _resize(values, size)


def _translate(frame: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """out(p) = frame(p + (dx, dy)), edges replicated: moves content back by (dx, dy)."""
    if dx == 0 and dy == 0:
        return frame
    h, w = frame.shape[:2]
    m = max(abs(dx), abs(dy))
    padded = np.pad(frame, ((m, m), (m, m), (0, 0)), mode="edge")
    return padded[m + dy : m + dy + h, m + dx : m + dx + w]


def excess_shift(dx: float, dy: float, limit: float) -> tuple[int, int]:
    """The part of a shift beyond `limit` (same direction), rounded: what pre-alignment removes."""
    norm = float(np.hypot(dx, dy))
    if norm <= limit:
        return 0, 0
    k = 1.0 - limit / norm
    return int(round(dx * k)), int(round(dy * k))


def work_size(h: int, w: int, side: int = WORK_SIDE) -> tuple[int, int]:
    scale = min(1.0, side / max(h, w))
    return max(8, round(h * scale)), max(8, round(w * scale))


def fill_frames(order: list[int], ref: int, frames: int) -> list[int]:
    """Indices for a `frames`-input graph: the reference in its middle, neighbours repeated in turn."""
    nbs = [i for i in order if i != ref]
    need = frames - 1
    if not nbs:
        nbs = [ref]
    filled = [nbs[k % len(nbs)] for k in range(need)]
    half = need // 2
    return [*filled[:half], ref, *filled[half:]]


def register_frames(frames: np.ndarray, ref: int) -> np.ndarray:
    """(T, H, W, 3) float [0,1] -> the same with every frame moved onto `frames[ref]` by its global
    translation (phase correlation as `burst/frames.py` measures it, rounded to whole pixels), as
    `model_input(align="full")` does. A frame that does not register is replaced by the reference
    (it then adds nothing to the cues). Used to train and calibrate the burst student on what the
    runtime will feed it."""
    from dereflect.burst.frames import register, thumbnail

    thumbs = [thumbnail((np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)) for f in frames]
    out = []
    for i, frame in enumerate(frames):
        if i != ref:
            dx, dy, problem = register(thumbs[ref][0], thumbs[i][0])
            scale = thumbs[ref][1]
            frame = frames[ref] if problem else _translate(frame, int(round(dx / scale)), int(round(dy / scale)))
        out.append(frame)
    return np.stack(out)


def model_input(
    burst: Burst, frames: int, side: int = WORK_SIDE, multiple: int = 8, align: str = "excess"
) -> tuple[np.ndarray, tuple[int, int], list[str]]:
    """(1, frames, 3, H, W) float32 at the working resolution (padded to `multiple`), the unpadded
    (h, w), and notes on what was done (pre-alignment).

    align: "excess" moves a frame back only by the part of its shift beyond the synthesis' range (the
    teacher's flows do the rest); "full" moves every frame onto the reference (a model with
    `registered_input`, models/burst_student.py)."""
    h_full, w_full = burst.reference.shape[:2]
    h, w = work_size(h_full, w_full, side)
    scale = h / h_full
    limit = MOTION_RANGE * min(h, w)
    ref = burst.ref
    notes = []
    work = []
    for i, frame in enumerate(burst.frames):
        small = _shrink(frame, (h, w))
        if align == "full":
            dx, dy = int(round(burst.shifts[i][0] * scale)), int(round(burst.shifts[i][1] * scale))
        else:
            dx, dy = excess_shift(burst.shifts[i][0] * scale, burst.shifts[i][1] * scale, limit)
        if align == "excess" and (dx, dy) != (0, 0):
            notes.append(f"{burst.labels[i]} pre-aligned by ({dx:+d},{dy:+d}) px at {w}x{h}")
        work.append(_translate(small, dx, dy))
    stack = np.stack([work[i] for i in fill_frames(list(range(len(work))), ref, frames)])  # (T,h,w,3)
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
        stack = np.pad(stack, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
    return np.ascontiguousarray(stack.transpose(0, 3, 1, 2)[None], dtype=np.float32), (h, w), notes


@dataclass
class BurstOutput:
    clean: np.ndarray  # the reference frame without the reflection, its dtype and full size
    seconds: float
    work_hw: tuple[int, int]
    notes: list[str]


def remove(burst: Burst, model: BurstModel, side: int = WORK_SIDE) -> BurstOutput:
    """The reference frame of `burst` with the reflection removed, at full resolution."""
    started = time.perf_counter()
    x, (h, w), notes = model_input(burst, model.frames, side, model.multiple, "full" if model.registered else "excess")
    if model.registered:
        notes.append(f"frames registered to the reference by global translation at {w}x{h}")
    y = np.asarray(model.impl.infer(x), dtype=np.float32)[0, :, :h, :w]  # (3,h,w)
    ref_work = x[0, model.frames // 2, :, :h, :w]
    correction = np.ascontiguousarray((y - ref_work).transpose(1, 2, 0))
    full = burst.reference
    if (h, w) != full.shape[:2]:
        correction = _resize(correction, full.shape[:2])
    clean = np.clip(to_float(full) + correction, 0.0, 1.0)
    out = from_float(clean, full.dtype)
    return BurstOutput(out, time.perf_counter() - started, (h, w), notes)
