"""torch Datasets for the trainers: synthetic sequences, sequence folders, paired folders.

Every item is a dict of float32 CHW tensors in [0,1] (flows in pixels), so the teacher and the
student read one format whatever the source. Randomness is keyed on (seed, index[, epoch]) with
numpy's SeedSequence, so an item is reproducible in any DataLoader worker, in any order.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dereflect.data.photos import IMAGE_SUFFIXES, read_rgb_uint8
from dereflect.data.synth import SynthConfig, SynthSequence, _read_flow, synthesize_sequence
from dereflect.errors import DereflectError
from dereflect.images import read_rgb_float


def _item_rng(seed: int, index: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, index] if epoch == 0 else [seed, epoch, index])


def _chw(x: np.ndarray) -> torch.Tensor:
    """(..., H, W, C) numpy -> (..., C, H, W) contiguous float32 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.movedim(-1, -3).contiguous()


def _colour_jitter_matrix(rng: np.random.Generator, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brightness, contrast, saturation and per-channel gain folded into one affine colour map
    (x @ m + b), so jittering a photo costs a single pass over it."""
    bright = rng.uniform(0.8, 1.2)
    contrast = rng.uniform(0.8, 1.2)
    sat = rng.uniform(0.7, 1.3)
    gain = np.exp(rng.normal(0.0, 0.05, size=3))
    lum = np.array([0.299, 0.587, 0.114])
    sat_m = sat * np.eye(3) + (1.0 - sat) * np.outer(lum, np.ones(3))  # row vector convention
    m = sat_m * contrast * bright * gain[None, :]
    b = (1.0 - contrast) * (mean @ sat_m) * bright * gain
    return m.astype(np.float32), b.astype(np.float32)


def colour_jitter(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random photometric change of a float HWC photo (same draw order whatever the photo)."""
    m, b = _colour_jitter_matrix(rng, photo.reshape(-1, 3)[::97].mean(axis=0))
    out = photo.reshape(-1, 3) @ m
    out += b
    return np.clip(out, 0.0, 1.0, out=out).reshape(photo.shape)


def sequence_to_item(seq: SynthSequence) -> dict[str, torch.Tensor]:
    """The dict the teacher reads: all frames, the middle frame as `input`, layers and flows."""
    m = seq.middle
    frames, t_all, r_all = _chw(seq.frames), _chw(seq.transmission), _chw(seq.reflection)
    return {
        "frames": frames,
        "input": frames[m].clone(),
        "transmission": t_all[m].clone(),
        "reflection": r_all[m].clone(),
        "transmission_all": t_all,
        "reflection_all": r_all,
        "flow_T": _chw(seq.flow_T),
        "flow_R": _chw(seq.flow_R),
    }


def draw_sequence(
    photos: Sequence[np.ndarray],
    index: int,
    *,
    seed: int,
    n_frames: int = 5,
    size: int = 256,
    augment: bool = True,
    config: SynthConfig | None = None,
    epoch: int = 0,
) -> SynthSequence:
    """Sequence `index` of the synthetic set: the one recipe behind both SyntheticSequences and
    `dereflect data synth` (so a written set equals the on-the-fly one for the same seed)."""
    rng = _item_rng(seed, index, epoch)
    n = len(photos)
    ti, ri = rng.choice(n, size=2, replace=n < 2)
    t_src, r_src = photos[ti], photos[ri]
    cfg = config or SynthConfig()
    if augment:
        t_src, r_src = colour_jitter(t_src, rng), colour_jitter(r_src, rng)
    else:
        cfg = SynthConfig(**{**cfg.__dict__, "flip_prob": 0.0})
    return synthesize_sequence(t_src, r_src, n_frames=n_frames, size=size, rng=rng, config=cfg)


class SyntheticSequences(Dataset):
    """Sequences synthesised on the fly from a pool of photos (dereflect.data.photos).

    Item i is deterministic for (seed, i) (and the epoch, once set_epoch(e > 0) is called).
    T and R photos are drawn independently from the same pool, so every photo serves as both
    layers (that is the T/R swap). With `augment`, each source photo also gets a colour jitter and
    a random horizontal flip; crops and scales vary in every case (they are the synthesis)."""

    def __init__(
        self,
        photos: Sequence[np.ndarray],
        *,
        n_frames: int = 5,
        size: int = 256,
        length: int = 1000,
        seed: int = 0,
        augment: bool = True,
        config: SynthConfig | None = None,
    ) -> None:
        if len(photos) == 0:
            raise DereflectError(None, "no photos to synthesise from")
        if length < 1:
            raise DereflectError(None, f"length must be >= 1, got {length}")
        self.photos = list(photos)
        self.n_frames, self.size, self.length, self.seed = n_frames, size, length, seed
        self.augment, self.config, self.epoch = augment, config, 0

    def set_epoch(self, epoch: int) -> None:
        """New draws per epoch (epoch 0 is the rng([seed, i]) data)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        seq = draw_sequence(
            self.photos,
            index,
            seed=self.seed,
            n_frames=self.n_frames,
            size=self.size,
            augment=self.augment,
            config=self.config,
            epoch=self.epoch,
        )
        return sequence_to_item(seq)


# ---------------------------------------------------------------------------------------------
# folders


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _images_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


_FLAT_FRAME = re.compile(r"^(?P<seq>.+)_I(?P<k>\d+)$")


def find_sequences(root: Path) -> dict[str, list[Path]]:
    """Name -> frame files, in order. Layouts: ROOT/SEQ/frame_000.png ... (ours, synthetic or
    real), ROOT/SEQ/<any images> (frames in natural name order), ROOT itself as one sequence, and
    flat ROOT/NAME_I0.png ... NAME_I4.png (Liu et al. 2020's ObstructionRemoval inputs)."""
    root = Path(root)
    if not root.is_dir():
        raise DereflectError(root, "not a folder" if root.exists() else "folder does not exist")
    seqs: dict[str, list[Path]] = {}
    if sorted(root.glob("frame_*.png")):
        seqs[root.name] = sorted(root.glob("frame_*.png"))
    for sub in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name)):
        if sub.name in ("transmission", "reflection", "transmission_layer", "blended"):
            continue
        frames = sorted(sub.glob("frame_*.png")) or _images_in(sub)
        if frames:
            seqs[sub.name] = frames
    flat: dict[str, list[tuple[int, Path]]] = {}
    for p in _images_in(root):
        m = _FLAT_FRAME.match(p.stem)
        if m:
            flat.setdefault(m["seq"], []).append((int(m["k"]), p))
    for name, frames in sorted(flat.items()):
        seqs[name] = [p for _, p in sorted(frames)]
    if not seqs:
        raise DereflectError(root, "no sequences found (expected SEQ/frame_000.png ..., SEQ/<images>, or NAME_I0.png ... NAME_I4.png)")
    return seqs


def _resize_crop(x: np.ndarray, size: int | None) -> np.ndarray:
    """(N,H,W,C) float: scale the short side to `size`, centre-crop a square. Flows must be
    scaled separately (their values are pixel lengths: see _resize_factors)."""
    if size is None:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    h, w = t.shape[-2:]
    nh, nw, scale = _resized(h, w, size)
    if (nh, nw) != (h, w):
        t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
    y0, x0 = (nh - size) // 2, (nw - size) // 2
    return t[:, :, y0 : y0 + size, x0 : x0 + size].permute(0, 2, 3, 1).numpy()


class SequenceFolder(Dataset):
    """Written sequences (dereflect data synth) or real ones. Real ones without layers or flows
    give only "frames" (N,3,H,W) and "input" (the middle frame, index N//2); synthetic ones give
    everything SyntheticSequences does. size: None = as stored; an int = short side scaled to it,
    then a centre square crop (flows scaled with the image)."""

    def __init__(self, root: str | Path, size: int | None = None) -> None:
        self.root = Path(root)
        self.sequences = find_sequences(self.root)
        self.names = list(self.sequences)
        self.size = size

    def __len__(self) -> int:
        return len(self.names)

    def has_ground_truth(self, index: int) -> bool:
        """True when the sequence has its layers and flows (a synthetic one): trainable with supervision."""
        files = self.sequences[self.names[index]]
        folder = files[0].parent
        return (
            all((folder / sub / p.name).is_file() for sub in ("transmission", "reflection") for p in files)
            and (folder / "flow_T.npy").is_file()
            and (folder / "flow_R.npy").is_file()
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        name = self.names[index]
        files = self.sequences[name]
        frames = [read_rgb_float(p) if p.suffix.lower() == ".png" else read_rgb_uint8(p).astype(np.float32) / 255.0 for p in files]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise DereflectError(files[0].parent, f"frames of different sizes: {sorted(shapes)}")
        stack = np.stack(frames)
        folder = files[0].parent
        item = {}
        layers_here = all((folder / sub / p.name).is_file() for sub in ("transmission", "reflection") for p in files)
        flows_here = (folder / "flow_T.npy").is_file() and (folder / "flow_R.npy").is_file()
        h, w = stack.shape[1:3]
        frames_t = _chw(_resize_crop(stack, self.size))
        item["frames"] = frames_t
        item["input"] = frames_t[len(files) // 2].clone()
        if layers_here and flows_here:
            t_all = np.stack([read_rgb_float(folder / "transmission" / p.name) for p in files])
            r_all = np.stack([read_rgb_float(folder / "reflection" / p.name) for p in files])
            t_all, r_all = _chw(_resize_crop(t_all, self.size)), _chw(_resize_crop(r_all, self.size))
            item.update(
                transmission=t_all[len(files) // 2].clone(),
                reflection=r_all[len(files) // 2].clone(),
                transmission_all=t_all,
                reflection_all=r_all,
            )
            for key in ("T", "R"):
                flow = _read_flow(folder / f"flow_{key}.npy", stack.shape)
                if self.size is not None:
                    nh, nw, _ = _resized(h, w, self.size)
                    flow = _resize_crop(flow, self.size) * np.array([nw / w, nh / h], np.float32)
                item[f"flow_{key}"] = _chw(flow)
        return item


def _resized(h: int, w: int, size: int) -> tuple[int, int, float]:
    """New (h, w) when the short side goes to `size`, and the nominal scale."""
    scale = size / min(h, w)
    return max(size, round(h * scale)), max(size, round(w * scale)), scale


class PairedFolder(Dataset):
    """Real (or any) pairs: ROOT/blended/NAME.* + ROOT/transmission/NAME.* (or transmission_layer/).

    Files without a partner are skipped with one warning naming them. size=None gives whole
    images (evaluation); an int gives size x size crops: random (with scale jitter, flips and a
    colour jitter shared by both images) when `augment`, centred otherwise. `names` restricts
    the set (e.g. one side of scene_split)."""

    def __init__(
        self, root: str | Path, *, size: int | None = 256, augment: bool = False, seed: int = 0, names: Sequence[str] | None = None
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DereflectError(self.root, "not a folder" if self.root.exists() else "folder does not exist")
        blended = self.root / "blended"
        trans = next((self.root / d for d in ("transmission", "transmission_layer") if (self.root / d).is_dir()), None)
        if not blended.is_dir() or trans is None:
            raise DereflectError(self.root, "expected blended/ and transmission/ (or transmission_layer/) subfolders")
        inputs = {p.stem: p for p in _images_in(blended)}
        targets = {p.stem: p for p in _images_in(trans)}
        unpaired = sorted(
            [inputs[k].relative_to(self.root).as_posix() for k in inputs.keys() - targets.keys()]
            + [targets[k].relative_to(self.root).as_posix() for k in targets.keys() - inputs.keys()]
        )
        if unpaired:
            warnings.warn(f"{self.root}: skipping {len(unpaired)} unpaired file(s): {', '.join(unpaired)}", stacklevel=2)
        stems = sorted(inputs.keys() & targets.keys(), key=_natural_key)
        if names is not None:
            missing = sorted(set(names) - set(stems))
            if missing:
                raise DereflectError(self.root, f"no pair named {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
            wanted = set(names)
            stems = [s for s in stems if s in wanted]
        if not stems:
            raise DereflectError(self.root, "no image pairs found (blended/NAME.* with transmission/NAME.*)")
        self.names = stems
        self.pairs = [(inputs[s], targets[s]) for s in stems]
        self.size, self.augment, self.seed, self.epoch = size, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        src, tgt = self.pairs[index]
        a, b = read_rgb_uint8(src), read_rgb_uint8(tgt)
        if a.shape != b.shape:
            raise DereflectError(tgt, f"size {b.shape[1]}x{b.shape[0]} differs from {src.name}'s {a.shape[1]}x{a.shape[0]}")
        rng = _item_rng(self.seed, index, self.epoch)
        if self.size is not None:
            a, b = self._crop(a, b, rng)
        x, y = a.astype(np.float32) / 255.0, b.astype(np.float32) / 255.0
        if self.augment:
            m, bias = _colour_jitter_matrix(rng, y.reshape(-1, 3)[::97].mean(axis=0))
            x = np.clip(x.reshape(-1, 3) @ m + bias, 0.0, 1.0).reshape(x.shape)
            y = np.clip(y.reshape(-1, 3) @ m + bias, 0.0, 1.0).reshape(y.shape)
        return {"input": _chw(x), "transmission": _chw(y)}

    def _crop(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        size = self.size
        h, w = a.shape[:2]
        scale = size / min(h, w) if min(h, w) < size else 1.0
        if self.augment:
            scale = max(scale * rng.uniform(0.75, 1.25), size / min(h, w))
        if abs(scale - 1.0) > 1e-6:
            new = (max(size, math.ceil(w * scale)), max(size, math.ceil(h * scale)))
            a = np.asarray(Image.fromarray(a).resize(new, Image.Resampling.BILINEAR, reducing_gap=2.0))
            b = np.asarray(Image.fromarray(b).resize(new, Image.Resampling.BILINEAR, reducing_gap=2.0))
            h, w = a.shape[:2]
        if self.augment:
            y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        else:
            y0, x0 = (h - size) // 2, (w - size) // 2
        a, b = a[y0 : y0 + size, x0 : x0 + size], b[y0 : y0 + size, x0 : x0 + size]
        if self.augment and rng.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        return a, b


def scene_of(name: str) -> str:
    """Scene id of a pair name. real_pairs_saggy361 names files `<scene>-<k>` (one background,
    several reflection shots: `70-16.jpeg` is scene 70, shot 16), so the scene is the part before
    the first dash; a name without a dash is a scene of its own."""
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    return stem.split("-", 1)[0] if "-" in stem else stem


def scene_split(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split pair names train/val BY SCENE (scene_of), so one background never lands in both.
    Scenes are shuffled with `seed`; round(val_fraction * scenes) go to val (at least one when
    val_fraction > 0 and there are two or more scenes). Input order is kept within each side."""
    if not 0.0 <= val_fraction < 1.0:
        raise DereflectError(None, f"val_fraction must be in [0, 1), got {val_fraction}")
    scenes = sorted({scene_of(n) for n in names}, key=_natural_key)
    order = np.random.default_rng(seed).permutation(len(scenes))
    n_val = round(val_fraction * len(scenes))
    if val_fraction > 0 and len(scenes) >= 2:
        n_val = min(max(n_val, 1), len(scenes) - 1)
    val_scenes = {scenes[i] for i in order[:n_val]}
    return [n for n in names if scene_of(n) not in val_scenes], [n for n in names if scene_of(n) in val_scenes]
