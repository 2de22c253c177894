"""What the trainers feed on: `--data` folders sorted into photos, sequences and real pairs,
and step-indexed datasets whose item i is a pure function of (seed, i).

Because every item depends only on its index, a run resumed at step s (or split over DDP ranks,
or over DataLoader workers) sees exactly the batches an uninterrupted run would have seen.
Item i belongs to step i // batch; all items of one step come from the same source, so a batch
is never a mix of synthetic sequences and real single-image pairs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dereflect.errors import DereflectError
from dereflect.images import IMAGE_SUFFIXES, from_float


@dataclass
class DataSources:
    photos: list[Path] = field(default_factory=list)  # folders of natural photos (synthesis sources)
    pairs: list[Path] = field(default_factory=list)  # real pairs: blended/ + transmission/
    sequences: list[Path] = field(default_factory=list)  # folders of written sequences
    reflections: list[Path] = field(default_factory=list)  # banks of real reflection layers (bank.json + layers/)

    def describe(self) -> str:
        parts = [f"photos: {', '.join(map(str, self.photos)) or 'scikit-image bundled'}"]
        if self.pairs:
            parts.append(f"real pairs: {', '.join(map(str, self.pairs))}")
        if self.sequences:
            parts.append(f"sequences: {', '.join(map(str, self.sequences))}")
        if self.reflections:
            parts.append(f"reflection banks: {', '.join(map(str, self.reflections))}")
        return "; ".join(parts)


def discover(folders: list[Path] | None) -> DataSources:
    """Sort `--data` folders by layout; an empty or missing folder is an error before any work."""
    from dereflect.data.real_reflections import is_bank

    sources = DataSources()
    for folder in folders or []:
        folder = Path(folder)
        if not folder.is_dir():
            raise DereflectError(folder, "data folder does not exist")
        if is_bank(folder):
            sources.reflections.append(folder)
        elif (folder / "blended").is_dir():
            sources.pairs.append(folder)
        elif any((sub / "frame_000.png").is_file() for sub in folder.iterdir() if sub.is_dir()):
            sources.sequences.append(folder)
        elif any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            sources.photos.append(folder)
        else:
            raise DereflectError(folder, "no images, pairs (blended/), sequences (*/frame_000.png) or reflection bank (bank.json) found")
    return sources


def load_all_photos(sources: DataSources, max_side: int) -> list[np.ndarray]:
    from dereflect.data.photos import load_photos

    if not sources.photos:
        return load_photos(None, max_side=max_side)
    photos: list[np.ndarray] = []
    for folder in sources.photos:
        photos.extend(load_photos(folder, max_side=max_side))
    if len(photos) < 2:
        raise DereflectError(sources.photos[0], "need at least 2 photos to synthesise reflections")
    return photos


def load_pairs(folders: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """All real pairs as uint8 HWC (blended, transmission), kept in memory (a few hundred MB at most)."""
    from dereflect.data.datasets import PairedFolder

    pairs = []
    for folder in folders:
        ds = PairedFolder(folder, size=None)
        for i in range(len(ds)):
            item = ds[i]
            pairs.append(tuple(from_float(item[k].permute(1, 2, 0).numpy()) for k in ("input", "transmission")))
    return pairs


class LabelledSequences(Dataset):
    """The sequences of `--data` sequence folders that have layers and flows (written by
    `dereflect data synth`), at the training size. Real sequences without ground truth cannot be
    supervised and are left out with a warning naming how many."""

    def __init__(self, folders: list[Path], size: int) -> None:
        from dereflect.data.datasets import SequenceFolder

        self.items: list[tuple[Dataset, int]] = []
        for folder in folders:
            seqs = SequenceFolder(folder, size=size)
            keep = [i for i in range(len(seqs)) if seqs.has_ground_truth(i)]
            if len(keep) < len(seqs):
                warnings.warn(
                    f"{folder}: {len(seqs) - len(keep)} sequence(s) without layers/flows are not used (no ground truth)", stacklevel=2
                )
            self.items += [(seqs, i) for i in keep]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        seqs, i = self.items[index]
        return seqs[i]


def random_pair_crop(pair: tuple[np.ndarray, np.ndarray], size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random scale, crop and flip of a real pair, as float CHW tensors."""
    blended, target = pair
    h, w = blended.shape[:2]
    scale = rng.uniform(max(size / min(h, w), 0.6), max(size / min(h, w), 1.0) * 1.2)
    if abs(scale - 1.0) > 1e-3:
        from PIL import Image

        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        blended = np.asarray(Image.fromarray(blended).resize((nw, nh), Image.BICUBIC))
        target = np.asarray(Image.fromarray(target).resize((nw, nh), Image.BICUBIC))
        h, w = nh, nw
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    blended, target = blended[y : y + size, x : x + size], target[y : y + size, x : x + size]
    if rng.random() < 0.5:
        blended, target = blended[:, ::-1], target[:, ::-1]
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0
    return {"input": to_t(blended), "transmission": to_t(target)}


def composite_set(composites: Dataset | Sequence[Path] | None, synthetic: Dataset, size: int, seed: int) -> Dataset | None:
    """A Dataset of composited pairs: `composites` itself, or one made from reflection-bank folders
    (DataSources.reflections) over the synthetic set's own photos (its training photos: the
    validation photos never get a composite). None when there is nothing to composite."""
    if composites is None or isinstance(composites, Dataset):
        return composites
    folders = [Path(f) for f in composites]
    if not folders:
        return None
    from dereflect.data.real_reflections import CompositePairs, ReflectionBank

    photos = getattr(synthetic, "photos", None)
    if not photos:
        raise DereflectError(folders[0], "a reflection bank needs transmission photos to composite onto: the synthetic set has none")
    return CompositePairs(photos, ReflectionBank(folders), size=size, length=max(1, len(synthetic)), seed=seed)


class StepData(Dataset):
    """Item i of step i // batch: a synthetic sequence made on the fly, a written sequence from
    `--data` (with `sequence_fraction`), (student, with real pairs) a real crop, or (student,
    with a reflection bank, `composite_fraction`) a real reflection composited over a photo.

    Sequence items carry `frames` for the teacher; real pairs and composites only `input` and
    `transmission`. Composites count on the synthetic side of a recipe (RDNet: ~60 % synthetic,
    ~40 % real): real_fraction 0.4 + composite_fraction 0.3 leaves 0.3 to the synthesis.
    `composites`: a Dataset of pairs, or bank folders (DataSources.reflections), composited over
    the synthetic set's photos.
    """

    def __init__(
        self,
        synthetic: Dataset,
        batch: int,
        seed: int,
        real_pairs=None,
        real_fraction: float = 0.0,
        size: int = 128,
        sequences: Dataset | None = None,
        sequence_fraction: float = 0.0,
        composites: Dataset | Sequence[Path] | None = None,
        composite_fraction: float = 0.0,
    ):
        self.synthetic, self.batch, self.seed = synthetic, batch, seed
        self.real_pairs, self.real_fraction, self.size = real_pairs or [], real_fraction, size
        self.sequences = sequences if sequences is not None and len(sequences) else None
        self.sequence_fraction = sequence_fraction
        composites = composite_set(composites, synthetic, size, seed) if composite_fraction > 0 else None
        self.composites = composites if composites is not None and len(composites) else None
        self.composite_fraction = composite_fraction

    def __len__(self) -> int:
        return len(self.synthetic)

    def source(self, step: int) -> str:
        """ "real", "sequence", "composite" or "synthetic": one draw per step, so a batch never mixes
        sources. The thresholds stack in that order, so adding composites leaves every step that
        was real or a sequence as it was."""
        u = np.random.default_rng([self.seed, step, 1]).random()
        real = self.real_fraction if self.real_pairs else 0.0
        if u < real:
            return "real"
        seq = self.sequence_fraction if self.sequences is not None else 0.0
        if u < real + seq:
            return "sequence"
        if self.composites is not None and u < real + seq + self.composite_fraction:
            return "composite"
        return "synthetic"

    def __getitem__(self, i: int) -> dict:
        source = self.source(i // self.batch)
        rng = np.random.default_rng([self.seed, i, 2])
        if source == "real":
            return random_pair_crop(self.real_pairs[int(rng.integers(len(self.real_pairs)))], self.size, rng)
        if source == "sequence":
            return self.sequences[int(rng.integers(len(self.sequences)))]
        if source == "composite":
            return self.composites[i % len(self.composites)]
        return self.synthetic[i]


class RegisteredSequences(Dataset):
    """Sequence items with their `frames` moved onto the middle frame by a global translation, as the
    runtime feeds a burst student (`burst/pipeline.register_frames`, on 8-bit thumbnails as for photos).

    residual_px > 0: then, on 80 % of the items, every neighbour gets a random residual warp (a
    rotation and zoom moving the corners by up to ~residual_px, plus a smooth random displacement
    field of up to residual_px, like depth parallax), the label unchanged: what a global translation
    leaves of a real hand-held burst, which the synthesis' single scene plane underplays. Deterministic
    per item (seeded by index)."""

    def __init__(self, base: Dataset, residual_px: float = 0.0, seed: int = 0) -> None:
        self.base, self.residual_px, self.seed = base, residual_px, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        from dereflect.burst.pipeline import register_frames

        item = dict(self.base[i])
        frames = item["frames"].permute(0, 2, 3, 1).numpy()
        ref = frames.shape[0] // 2
        aligned = torch.from_numpy(np.ascontiguousarray(register_frames(frames, ref).transpose(0, 3, 1, 2)))
        rng = np.random.default_rng([self.seed, i, 7])
        if self.residual_px > 0 and rng.random() < 0.8:
            others = [k for k in range(aligned.shape[0]) if k != ref]
            aligned[others] = residual_warp(aligned[others], self.residual_px, rng)
        item["frames"] = aligned
        return item


def residual_warp(frames: torch.Tensor, px: float, rng: np.random.Generator) -> torch.Tensor:
    """(N,3,H,W) -> each frame resampled through its own small random warp (see RegisteredSequences)."""
    n, _, h, w = frames.shape
    half = 0.5 * max(h, w)
    grids = []
    for _ in range(n):
        angle = rng.uniform(-1, 1) * px / half  # radians: the corners move by about px
        zoom = 1.0 + rng.uniform(-1, 1) * px / half
        shift = rng.uniform(-0.5, 0.5, size=2) * px / half
        cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
        theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=torch.float32)
        grid = torch.nn.functional.affine_grid(theta[None], [1, 3, h, w], align_corners=False)
        field = torch.from_numpy(rng.uniform(-1, 1, size=(1, 2, 3, 3)).astype(np.float32)) * (px / half)
        field = torch.nn.functional.interpolate(field, size=(h, w), mode="bicubic", align_corners=True)
        grids.append(grid + field.permute(0, 2, 3, 1))
    warped = torch.nn.functional.grid_sample(frames, torch.cat(grids), mode="bilinear", padding_mode="border", align_corners=False)
    return warped.clamp(0.0, 1.0)


class StepSampler(Sampler[int]):
    """Indices of steps [start, stop) for one DDP rank: rank r takes its slice of every global batch."""

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1) -> None:
        if batch % world:
            raise DereflectError(None, f"batch {batch} is not divisible by {world} processes")
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch, rank, world

    def __iter__(self):
        per = self.batch // self.world
        for step in range(self.start, self.stop):
            base = step * self.batch + self.rank * per
            yield from range(base, base + per)

    def __len__(self) -> int:
        return (self.stop - self.start) * (self.batch // self.world)


def warn_unused(sources: DataSources, stage: str) -> None:
    if stage == "teacher" and sources.pairs:
        warnings.warn(
            f"the teacher needs sequences; real single-image pairs are not used: {', '.join(map(str, sources.pairs))}", stacklevel=2
        )
    if stage == "teacher" and sources.reflections:
        warnings.warn(
            f"the teacher needs sequences; reflection banks are not used: {', '.join(map(str, sources.reflections))}", stacklevel=2
        )
