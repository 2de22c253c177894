"""Real reflection layers cut out of real pairs, and training pairs composited from them.

Why: synthetic reflections (a second photo, blurred and tinted) miss what real glass does —
real reflections are dim, hazy, partly in focus, full of bright windows and lamps. Real pairs
hold real reflections, but saggy361 has only 107 backgrounds. Cutting each pair's reflection
out (R = blended - g*T in linear light) and laying it over *other* transmission photos gives
real-looking reflections over as many backgrounds as the synthesis has photos.

The hard part is what else lands in R. A pair shot twice is never perfectly aligned and its
exposure changes, so blended - g*T also holds residues of T's edges (a derivative-like ridge
where T is shifted, a faint copy of T where g is off). A model trained on those learns to
remove real scene content. So (1) only pairs whose ground truth is aligned to within
metrics.ALIGNED_MAX_SHIFT are used, T is first shifted onto the photo by the measured sub-pixel
translation, and (2) the part of R that a *local* linear fit of T and its gradients explains is
removed (`suppress_leak`); `leak_score` measures what is left, and layers above a threshold are
rejected. Bank layout (`tools/build_reflection_bank.py`):

    BANK/bank.json          {"format": "dereflect-reflection-bank", "version": 1, "layers": [...]}
    BANK/layers/NAME.png    16-bit RGB, R in linear light (not sRGB-encoded), clipped to [0, 1]

Each layer entry records its source pair, scene, shift, fitted gain and leak before/after.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.ndimage import shift as nd_shift
from torch.utils.data import Dataset

from dereflect.errors import DereflectError

BANK_FORMAT = "dereflect-reflection-bank"
BANK_INDEX = "bank.json"
LAYER_DIR = "layers"
LEAK_EDGE_SHARE = 0.1  # leak_score looks at T's strongest 10 % of pixels by gradient
MAX_LEAK = 0.2  # layers whose cleaned R still puts more of its edge energy on T's edges are rejected


# ---------------------------------------------------------------------------------------------
# colour


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding (numpy twin of synth.srgb_to_linear)."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """sRGB encoding (numpy twin of synth.linear_to_srgb)."""
    x = np.asarray(x, dtype=np.float32)
    return np.minimum(1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055, x * 12.92).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# which pairs


def saggy_training_pairs(shared: Path, val_fraction: float = 0.1, seed: int = 0) -> list[tuple[str, Path, Path]]:
    """(name, blended, transmission) of real_pairs_saggy361's TRAINING scenes: the side of
    scene_split(names, 0.1, seed=0) that tools/pack_gpu_data.py trains on. Its val scenes select
    models and the dev sets score them, so neither may feed a bank or a fit."""
    from dereflect.data.datasets import scene_split

    root = Path(shared) / "real_pairs_saggy361"
    files = {p.stem: p for p in (root / "blended").iterdir()}
    targets = {p.stem: p for p in (root / "transmission").iterdir()}
    train, _ = scene_split(sorted(files), val_fraction, seed=seed)
    return [(n, files[n], targets[n]) for n in train if n in targets]


# ---------------------------------------------------------------------------------------------
# measuring a pair


def fit_glass_gain(blended_lin: np.ndarray, transmission_lin: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Per-channel gain g with blended ~ g*T where there is no reflection (linear light).

    A reflection only adds light, so over the pixels it leaves alone blended/T is g, and
    elsewhere larger: g is the mode of the per-pixel log ratio (not a least-squares slope, which
    the reflection and the exposure-clipped pixels pull up). Both images are blurred by `sigma`
    and subsampled first, so a pixel or two of misalignment and JPEG noise do not spread the
    ratio. Dark and clipped pixels are left out (their ratio is noise)."""
    b = gaussian_filter(blended_lin, (sigma, sigma, 0))[::2, ::2]
    t = gaussian_filter(transmission_lin, (sigma, sigma, 0))[::2, ::2]
    ok = (t.min(axis=2) > 0.02) & (b.max(axis=2) < 0.98) & (t.max(axis=2) < 0.98)
    if ok.sum() < 100:
        return np.ones(3, np.float32)
    ratio = np.log(b[ok] / t[ok])
    gains = []
    for c in range(3):
        hist, edges = np.histogram(ratio[:, c], bins=300, range=(-1.5, 1.5))
        k = int(gaussian_filter(hist.astype(np.float64), 2.0).argmax())
        gains.append(math.exp(0.5 * (edges[k] + edges[k + 1])))
    return np.asarray(gains, np.float32)


def pair_translation(blended: np.ndarray, transmission: np.ndarray) -> np.ndarray:
    """(dy, dx) to shift T by so it lies on the photo (phase correlation to 1/8 px, grey)."""
    from skimage.registration import phase_cross_correlation

    g_b = np.asarray(blended, np.float64).mean(axis=2)
    g_t = np.asarray(transmission, np.float64).mean(axis=2)
    shift, _, _ = phase_cross_correlation(g_b, g_t, upsample_factor=8, normalization=None)
    return np.asarray(shift, np.float64)


def _grey_gradients(x: np.ndarray, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    g = gaussian_filter(np.asarray(x, np.float64).mean(axis=2), sigma)
    gy, gx = np.gradient(g)
    return gx, gy


def leak_score(r_lin: np.ndarray, t_lin: np.ndarray, border: int = 8) -> float:
    """Share of R's edge energy lying on T's strongest edges (top LEAK_EDGE_SHARE of pixels by
    T's gradient), on sRGB-encoded images (what the eye and the loss see), differentiated at a
    2-px scale so JPEG block noise (which is everywhere, and would dilute the share) counts little.

    A reflection independent of T puts about LEAK_EDGE_SHARE (0.1) of its edge energy there by
    chance; leaked T edges push it towards 1. A border is ignored (shift padding lives there)."""
    rx, ry = _grey_gradients(linear_to_srgb(r_lin))
    tx, ty = _grey_gradients(linear_to_srgb(t_lin))
    sl = (slice(border, -border), slice(border, -border))
    e_r = (rx * rx + ry * ry)[sl]
    e_t = (tx * tx + ty * ty)[sl]
    edges = e_t >= np.quantile(e_t, 1.0 - LEAK_EDGE_SHARE)
    return float(e_r[edges].sum() / max(e_r.sum(), 1e-12))


def gradient_correlation(r_lin: np.ndarray, t_lin: np.ndarray, border: int = 8) -> float:
    """Pearson correlation of |grad R| and |grad T| (sRGB-encoded, 2-px scale): a second leak
    measure, independent of leak_score's edge threshold. About 0 for an unrelated T."""
    rx, ry = _grey_gradients(linear_to_srgb(r_lin))
    tx, ty = _grey_gradients(linear_to_srgb(t_lin))
    sl = (slice(border, -border), slice(border, -border))
    return float(np.corrcoef(np.hypot(rx, ry)[sl].ravel(), np.hypot(tx, ty)[sl].ravel())[0, 1])


def suppress_leak(r_lin: np.ndarray, t_lin: np.ndarray, sigmas: Sequence[float] = (8.0, 4.0, 2.0), eps: float = 1e-4) -> np.ndarray:
    """Remove from R what a local linear fit of T explains (linear light, per channel), coarse to
    fine: one pass per window size in `sigmas` (px).

    In every window (two box filters: a Gaussian-like weight of std sigma, computed by running
    sums, so wide windows cost no more) R is regressed on T, dT/dx and dT/dy (a wrong gain leaves a copy of
    T, a sub-pixel shift a copy of its gradient); the fitted variation is subtracted and R's
    local mean kept. A real reflection is independent of T, so its fit is near zero (ridge `eps`
    keeps chance correlations in flat regions from being fitted) and it passes through; leaked T
    structure is what the fit captures. Why three scales: a gain that drifts across the frame
    (light changed between the shots) needs wide windows, a shift residue at fine texture narrow
    ones; on 14 bank layers one pass at 4 px left a |grad R|-|grad T| correlation of 0.069, the
    three passes 0.019 (0.005 against an unrelated T), keeping R itself (0.995 correlation)."""
    for sigma in sigmas:
        r_lin = _suppress_once(r_lin, t_lin, sigma, eps)
    return r_lin


def _suppress_once(r_lin: np.ndarray, t_lin: np.ndarray, sigma: float, eps: float) -> np.ndarray:
    out = np.empty_like(r_lin, dtype=np.float32)
    size = max(3, round(math.sqrt(6.0 * sigma * sigma + 1.0)))  # two boxes of this size: a Gaussian-like window of std sigma
    blur = lambda a: uniform_filter(uniform_filter(a, size), size)  # noqa: E731  (running sums: cost independent of sigma)
    for c in range(3):
        t = t_lin[..., c].astype(np.float64)
        gy, gx = np.gradient(t)
        feats = np.stack([t, gx, gy], axis=-1)  # (H, W, 3)
        r = r_lin[..., c].astype(np.float64)
        mf = np.stack([blur(feats[..., k]) for k in range(3)], axis=-1)
        mr = blur(r)
        cov = np.empty(feats.shape[:2] + (3, 3))
        for i in range(3):
            for j in range(i, 3):
                cov[..., i, j] = cov[..., j, i] = blur(feats[..., i] * feats[..., j]) - mf[..., i] * mf[..., j]
        xr = np.stack([blur(feats[..., k] * r) - mf[..., k] * mr for k in range(3)], axis=-1)
        coef = np.linalg.solve(cov + eps * np.eye(3), xr[..., None])[..., 0]
        # average the coefficients over the window too (as a guided filter does): no seams
        coef = np.stack([blur(coef[..., k]) for k in range(3)], axis=-1)
        explained = ((feats - mf) * coef).sum(axis=-1)
        out[..., c] = np.clip(r - explained, 0.0, None)
    return out


def fill_unknown(r_lin: np.ndarray, b_lin: np.ndarray, t_lin: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Where T or the photo is near clipping, blended - g*T says nothing about R (a blown-out lamp
    or a white post leaves a T-shaped hole, or a T-shaped blob): fill it from the surrounding R
    (normalised convolution), so the layer carries no outline of T's highlights."""
    bright = np.maximum(b_lin.max(axis=2), t_lin.max(axis=2))
    known = np.clip((0.85 - bright) / 0.15, 0.0, 1.0)
    known = np.minimum(known, gaussian_filter(known, 1.5))[..., None]
    num = gaussian_filter(r_lin * known, (sigma, sigma, 0))
    den = gaussian_filter(known, (sigma, sigma, 0))
    guess = num / np.maximum(den, 1e-3)
    return (known * r_lin + (1.0 - known) * guess).astype(np.float32)


@dataclass
class ExtractedLayer:
    reflection: np.ndarray  # HxWx3 float32, linear light, >= 0
    info: dict[str, Any]


def extract_reflection(blended: np.ndarray, transmission: np.ndarray, *, suppress: bool = True) -> ExtractedLayer:
    """R = blended_lin - g*T_lin (T shifted onto the photo, g fitted per channel), clipped at 0,
    then with T's leaked structure removed. Inputs: HxWx3 uint8 sRGB of one real pair."""
    b_lin = srgb_to_linear(blended.astype(np.float32) / 255.0)
    t_lin = srgb_to_linear(transmission.astype(np.float32) / 255.0)
    dy, dx = pair_translation(blended, transmission)
    if abs(dy) > 1e-3 or abs(dx) > 1e-3:
        t_lin = np.clip(nd_shift(t_lin, (dy, dx, 0), order=3, mode="nearest"), 0.0, 1.0).astype(np.float32)
    gain = fit_glass_gain(b_lin, t_lin)
    naive = np.clip(b_lin - gain * t_lin, 0.0, None).astype(np.float32)
    clean = naive
    if suppress:
        clean = suppress_leak(naive, gain * t_lin)
        clean = gaussian_filter(fill_unknown(clean, b_lin, gain * t_lin), (0.7, 0.7, 0))  # and JPEG's block noise
    info = {
        "shift_px": [float(dy), float(dx)],
        "gain": [round(float(g), 4) for g in gain],
        "leak_naive": round(leak_score(naive, t_lin), 4),
        "leak": round(leak_score(clean, t_lin), 4),
        "mean_r": round(float(clean.mean()), 5),
    }
    return ExtractedLayer(reflection=clean, info=info)


# ---------------------------------------------------------------------------------------------
# the bank on disk


def is_bank(folder: Path) -> bool:
    """True for a folder laid out as a reflection bank (bank.json + layers/)."""
    folder = Path(folder)
    return (folder / BANK_INDEX).is_file() and (folder / LAYER_DIR).is_dir()


class ReflectionBank:
    """The layers of one or more bank folders, read on demand (a layer is ~2 MB as float32; a
    worker holds none between items). layer(i) -> HxWx3 float32 linear-light R."""

    def __init__(self, folders: str | Path | Sequence[str | Path]) -> None:
        self.folders = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
        self.layers: list[tuple[Path, dict[str, Any]]] = []
        for folder in self.folders:
            self.layers += [(folder, entry) for entry in _read_index(folder)["layers"]]
        if not self.layers:
            raise DereflectError(self.folders[0] if self.folders else None, "no reflection layers")

    def __len__(self) -> int:
        return len(self.layers)

    def layer(self, i: int) -> np.ndarray:
        from dereflect.images import read_rgb_float

        folder, entry = self.layers[i]
        return read_rgb_float(folder / LAYER_DIR / entry["file"])


def _read_index(folder: Path) -> dict[str, Any]:
    index = folder / BANK_INDEX
    if not is_bank(folder):
        raise DereflectError(folder, f"not a reflection bank (expected {BANK_INDEX} and {LAYER_DIR}/)")
    try:
        meta = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise DereflectError(index, f"unreadable: {exc}") from exc
    if meta.get("format") != BANK_FORMAT or not meta.get("layers"):
        raise DereflectError(index, f"not a {BANK_FORMAT} index, or it lists no layers")
    return meta


# ---------------------------------------------------------------------------------------------
# compositing


@dataclass(frozen=True)
class CompositeConfig:
    """Ranges of the compositing draws (a layer's own strength is already real; these vary it)."""

    strength: tuple[float, float] = (0.6, 1.6)  # log-uniform multiplier of R
    r_scale: tuple[float, float] = (0.7, 1.4)  # resize of the R layer before the crop
    t_scale: tuple[float, float] = (0.6, 1.0)  # crop side / photo short side
    tint: float = 0.05  # std of R's per-channel log gain
    colour_jitter: bool = True  # of the transmission crop (datasets.colour_jitter), label and input alike
    blur_prob: float = 0.3  # extra defocus of R
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    shot_noise: tuple[float, float] = (0.0, 6e-4)
    read_noise: tuple[float, float] = (0.0, 2e-3)


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Float HWC resize, per channel with Pillow (antialiased when shrinking: its bilinear filter
    widens with the scale). Single-threaded on purpose: torch's antialiased resize fights the
    trainer's threads for the cores and runs ~50x slower inside a busy training process."""
    from PIL import Image

    if x.shape[:2] == (h, w):
        return np.ascontiguousarray(x, np.float32)
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c], np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))
        for c in range(x.shape[2])
    ]
    return np.stack(planes, axis=-1)


def _random_crop(x: np.ndarray, size: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """A size x size crop of x resized by `scale` (at least enough to cover the crop), maybe
    flipped. The square is cut from the source first and only it is resized (4-10x cheaper)."""
    h, w = x.shape[:2]
    side = min(h, w, max(1, round(size / max(scale, size / min(h, w)))))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    y = _resize(x[y0 : y0 + side, x0 : x0 + side], size, size)
    return y[:, ::-1] if rng.random() < 0.5 else y


def composite_pair(
    t_photo: np.ndarray, r_layer: np.ndarray, size: int, rng: np.random.Generator, config: CompositeConfig | None = None
) -> dict[str, np.ndarray]:
    """One training pair: the photo T (sRGB [0,1]) seen through glass with a real reflection.

    input = srgb(g*T_lin + k*tint*R_lin + noise), transmission = T (the scene without the glass,
    as real ground truth is shot), g the per-channel glass transform fitted on real pairs
    (synth.glass_gain), k a strength. Returns HWC float32 in [0,1]."""
    from dereflect.data.datasets import colour_jitter
    from dereflect.data.synth import glass_gain

    cfg = config or CompositeConfig()
    t_scale = rng.uniform(*cfg.t_scale) * min(t_photo.shape[:2]) / size
    t = _random_crop(t_photo, size, 1.0 / t_scale, rng)
    if cfg.colour_jitter:
        t = colour_jitter(np.ascontiguousarray(t), rng)
    r = _random_crop(r_layer, size, rng.uniform(*cfg.r_scale) * size / min(r_layer.shape[:2]) * 1.25, rng)
    if rng.random() < cfg.blur_prob:
        s = rng.uniform(*cfg.blur_sigma)
        r = gaussian_filter(r, (s, s, 0))
    k = math.exp(rng.uniform(math.log(cfg.strength[0]), math.log(cfg.strength[1])))
    tint = np.exp(rng.normal(0.0, cfg.tint, size=3)).astype(np.float32)
    g = glass_gain(rng)
    t_lin = srgb_to_linear(t)
    blend = g * t_lin + (k * tint) * r
    shot, read = rng.uniform(*cfg.shot_noise), rng.uniform(*cfg.read_noise)
    noise = rng.standard_normal(blend.shape).astype(np.float32)
    blend = blend + noise * np.sqrt(shot * np.clip(blend, 0.0, None) + read * read)
    return {"input": np.clip(linear_to_srgb(np.clip(blend, 0.0, 1.0)), 0.0, 1.0), "transmission": np.ascontiguousarray(t, np.float32)}


class CompositePairs(Dataset):
    """Pairs composited on the fly: item i is a pure function of (seed, i) — which photo, which
    layer, every crop and draw — so it is the same in any worker, order or resumed run.

    photos: float HWC [0,1] transmission sources (the synthesis photos); bank: a ReflectionBank.
    Items: {"input", "transmission"} float32 CHW in [0,1] at size x size."""

    def __init__(
        self,
        photos: Sequence[np.ndarray],
        bank: ReflectionBank,
        *,
        size: int = 128,
        length: int = 1000,
        seed: int = 0,
        config: CompositeConfig | None = None,
    ) -> None:
        if not photos:
            raise DereflectError(None, "no transmission photos to composite reflections onto")
        self.photos, self.bank, self.size, self.length, self.seed = list(photos), bank, size, length, seed
        self.config = config

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index, 3])
        photo = self.photos[int(rng.integers(len(self.photos)))]
        layer = self.bank.layer(int(rng.integers(len(self.bank))))
        pair = composite_pair(photo, layer, self.size, rng, self.config)
        return {k: torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1))) for k, v in pair.items()}
