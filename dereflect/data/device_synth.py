"""Synthetic training batches made on the training device, a whole batch per call.

Why: `synth.synthesize_sequence` makes one sequence at a time with numpy + CPU torch inside
DataLoader workers. On a lent H200 that starved the GPU (about 10k samples in 10 minutes). Here
the photos live on the device once, as uint8, and every step of the same recipe (data/synth.py's
module docstring) runs as batched tensor ops over (batch, frame, pixel): no workers, no per-sample
Python loops, no host round-trips (so nothing forces a CUDA sync).

Same recipe and SynthConfig ranges as synth.py (including the glass gain fitted on real pairs,
synth.glass_gain, and `glass_in_label`), plus SyntheticSequences' colour jitter and flips of the
sources (augment=True), with these deliberate differences:
- Photos and their block-mean shrinks live in one flat, packed pixel buffer (RGB in an int32),
  so photos of any size share it with no padding. Per batch, each sample's image is gathered onto
  a canvas the size of the largest photo (edges repeated, which is padding_mode="border") and all
  its frames are sampled by one grid_sample.
- Interpolation happens in sRGB (the stored uint8 values) and the colour jitter and the sRGB
  decode come after it; synth.py decodes, then interpolates. The two differ only on sharp edges
  and by far less than the jitter itself (tests/test_device_synth.py compares distributions).
- The defocus kernel has a fixed radius (3 sigma of the largest sigma the config can draw, per-
  frame jitter capped at +3 std), so one grouped convolution serves every frame of the batch.
- The ghost copy is sampled for every sample and mixed in with weight 0 where there is none
  (branch-free: no data-dependent shapes).
Randomness comes from one torch.Generator on the device, seeded from (seed, step, part): a
resumed run gets the same batches. CPU and CUDA draw different (but each deterministic) streams.

A trainer makes one call per step instead of iterating a DataLoader:

    synth = DeviceSynthesizer(train_photos, device, n_frames=cfg.frames, size=cfg.size, seed=cfg.seed)
    for step in range(start_step, cfg.steps):
        batch = synth.batch(step, cfg.batch // world, part=rank)   # dict of tensors already on `device`
        trainer.train_step(batch, step)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dereflect.data.synth import (
    GLASS_GAIN_AT,
    GLASS_QUANTILES,
    GLASS_TINT_FACTOR,
    SynthConfig,
    as_photo,
    linear_to_srgb,
    srgb_to_linear,
)
from dereflect.errors import DereflectError, UsageError

Range = tuple[float, float]
KEYS = ("frames", "input", "transmission", "reflection", "transmission_all", "reflection_all", "flow_T", "flow_R")
_LUM = (0.299, 0.587, 0.114)


@dataclass
class _Photos:
    """Every photo and its k-fold block-mean shrinks (k = 1..levels) in one flat buffer (4 bytes a
    pixel, no padding: the pool can be hundreds of photos of mixed sizes).

    packed: (total_pixels,) int32, R | G << 8 | B << 16, rows of each image back to back.
    base/height/width: (n_photos * levels,) per image, image id = photo * levels + (k - 1).
    mean: (n_photos, 3) float32, the photo's mean colour (for the colour jitter's contrast)."""

    packed: torch.Tensor
    base: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    mean: torch.Tensor
    levels: int
    count: int
    rows: torch.Tensor  # arange(canvas height), long: the largest image fits the canvas
    cols: torch.Tensor


def _as_uint8(photo: np.ndarray, index: int) -> np.ndarray:
    """synth.py's photo rules (grey, RGBA, uint16 and float accepted; too small refused), stored as uint8."""
    return np.ascontiguousarray(np.round(as_photo(photo, f"photo {index}") * 255.0).astype(np.uint8))


def _pack(img: torch.Tensor) -> torch.Tensor:
    """(H,W,3) uint8 -> (H*W,) int32: one gather then reads a whole pixel."""
    v = img.reshape(-1, 3).to(torch.int32)
    return v[:, 0] | (v[:, 1] << 8) | (v[:, 2] << 16)


def _load_photos(photos: Sequence[np.ndarray], size: int, device: torch.device) -> _Photos:
    """Shrink levels k = 1..K where K covers the largest crop scale any photo allows
    (s <= (short side - 1) / (size - 1), as the middle frame's footprint is the whole frame)."""
    arrays = [_as_uint8(p, i) for i, p in enumerate(photos)]
    levels = max(1, max(round((min(a.shape[:2]) - 1) / (size - 1)) for a in arrays))
    chunks, base, heights, widths, means = [], [], [], [], []
    offset = 0
    for a in arrays:
        t = torch.from_numpy(a)
        means.append(a.reshape(-1, 3)[::97].mean(axis=0, dtype=np.float64) / 255.0)
        for k in range(1, levels + 1):
            img = t if k == 1 else _shrink(t, k)
            chunks.append(_pack(img))
            base.append(offset)
            heights.append(img.shape[0])
            widths.append(img.shape[1])
            offset += img.shape[0] * img.shape[1]
    if offset >= 2**31:
        raise DereflectError(None, f"{len(arrays)} photos hold {offset} pixels: more than one buffer indexes (2^31)")
    long = dict(dtype=torch.int64, device=device)
    return _Photos(
        packed=torch.cat(chunks).to(device),
        base=torch.tensor(base, **long),
        height=torch.tensor(heights, **long),
        width=torch.tensor(widths, **long),
        mean=torch.tensor(np.stack(means), dtype=torch.float32, device=device),
        levels=levels,
        count=len(arrays),
        rows=torch.arange(max(heights), **long),
        cols=torch.arange(max(widths), **long),
    )


def _shrink(img: torch.Tensor, k: int) -> torch.Tensor:
    """Block mean by k (synth.py's anti-aliasing: bilinear sampling must not skip pixels)."""
    h, w = img.shape[0] // k, img.shape[1] // k
    x = img[: h * k, : w * k].permute(2, 0, 1).float()[None]
    return F.avg_pool2d(x, k)[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


class _Draw:
    """Uniform / normal draws from one device generator, in a fixed order."""

    def __init__(self, gen: torch.Generator, device: torch.device, batch: int) -> None:
        self.gen, self.device, self.batch = gen, device, batch

    def uniform(self, r: Range, *shape: int) -> torch.Tensor:
        u = torch.rand((self.batch, *shape), generator=self.gen, device=self.device)
        return r[0] + (r[1] - r[0]) * u

    def normal(self, std: float, *shape: int) -> torch.Tensor:
        return std * torch.randn((self.batch, *shape), generator=self.gen, device=self.device)

    def chance(self, p: float, *shape: int) -> torch.Tensor:
        return torch.rand((self.batch, *shape), generator=self.gen, device=self.device) < p

    def unit(self) -> torch.Tensor:
        a = self.uniform((0.0, 2.0 * math.pi))
        return torch.stack((a.cos(), a.sin()), dim=-1)


# ---------------------------------------------------------------------------------------------
# geometry (float32: 1e-4 px is far below what bilinear sampling resolves)


def _homographies(
    t: torch.Tensor, shift: torch.Tensor, rot: torch.Tensor, zoom: torch.Tensor, persp: torch.Tensor, centre: tuple[float, float]
) -> torch.Tensor:
    """(B,N,3,3) frame pixel -> canonical pixel, synth._layer_homography for every (b, n).
    t: (N,), shift: (B,N,2), rot/zoom: (B,), persp: (B,2)."""
    tt = t[None, :]
    z = 1.0 + zoom[:, None] * tt
    c, s = torch.cos(rot[:, None] * tt), torch.sin(rot[:, None] * tt)
    px, py = persp[:, 0:1] * tt, persp[:, 1:2] * tt
    cx, cy = centre
    # from_c @ A @ to_c with A = [[zc, -zs, sx], [zs, zc, sy], [px, py, 1]] written out
    a00, a01, a10, a11 = z * c, -z * s, z * s, z * c
    tx, ty = shift[..., 0], shift[..., 1]
    w2 = 1.0 - px * cx - py * cy
    row0 = (a00 + cx * px, a01 + cx * py, -a00 * cx - a01 * cy + tx + cx * w2)
    row1 = (a10 + cy * px, a11 + cy * py, -a10 * cx - a11 * cy + ty + cy * w2)
    row2 = (px, py, w2)
    return torch.stack([torch.stack(r, dim=-1) for r in (row0, row1, row2)], dim=-2)


def _apply(hom: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply (...,3,3) homographies to points broadcast against them: hom (B,N,3,3), xs/ys (B|1,N|1,*P)."""
    extra = xs.dim() - 2
    h = hom.reshape(*hom.shape[:2], 3, 3, *([1] * extra))
    den = h[:, :, 2, 0] * xs + h[:, :, 2, 1] * ys + h[:, :, 2, 2]
    return (
        (h[:, :, 0, 0] * xs + h[:, :, 0, 1] * ys + h[:, :, 0, 2]) / den,
        (h[:, :, 1, 0] * xs + h[:, :, 1, 1] * ys + h[:, :, 1, 2]) / den,
    )


def _motion(d: _Draw, cfg: SynthConfig, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-frame homographies of T and R (synth._draw_motion, batched)."""
    px = size / 256.0
    dev = d.device
    times = (torch.arange(n, device=dev, dtype=torch.float32) - n // 2) / (n // 2)
    shake = d.normal(cfg.path_jitter, n, 2)
    shake[:, n // 2] = 0.0
    e1, e2, e3, e4 = d.unit(), d.unit(), d.unit(), d.unit()
    k_path = d.uniform((-cfg.path_curvature, cfg.path_curvature))
    k_own = d.uniform((-cfg.path_curvature, cfg.path_curvature))
    k_t = d.uniform(cfg.t_shift) * px
    lam = torch.where(d.chance(cfg.r_opposite_prob), -d.uniform(cfg.r_opposite), d.uniform(cfg.r_same))
    own = cfg.r_own_path * k_t
    rot = torch.deg2rad(d.uniform((-cfg.rotation_deg, cfg.rotation_deg)))
    zoom = d.uniform((-cfg.zoom, cfg.zoom))
    r_zoom = zoom + d.uniform((-cfg.r_zoom, cfg.r_zoom))
    persp = d.uniform((-cfg.perspective, cfg.perspective), 2) / (0.5 * size)
    # R must move relative to T: push lambda away from 1 (synth.py does the same)
    min_rel = cfg.min_r_shift * px
    sign = torch.where(lam >= 1.0, 1.0, -1.0)
    lam = torch.where((lam - 1.0).abs() * k_t < min_rel, 1.0 + sign * min_rel / k_t, lam)
    t = times[None, :, None]
    cam = e1[:, None] * t + (k_path[:, None] * e2)[:, None] * t * t + shake
    r_shift = (lam * k_t)[:, None, None] * cam + own[:, None, None] * (e3[:, None] * t + (k_own[:, None] * e4)[:, None] * t * t)
    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    return (
        _homographies(times, k_t[:, None, None] * cam, rot, zoom, persp, centre),
        _homographies(times, r_shift, rot, r_zoom, persp, centre),
    )


@dataclass
class _Crop:
    """Where each sample reads its layer: image id in the buffer, flip, and the affine
    canonical pixel -> source pixel (scale, offset), synth._fit_crop batched."""

    image: torch.Tensor  # (B,) long
    scale: torch.Tensor  # (B,)
    ox: torch.Tensor
    oy: torch.Tensor
    flip: torch.Tensor  # (B,) bool
    width: torch.Tensor  # (B,) float32, of the chosen image
    height: torch.Tensor


def _fit_crop(
    d: _Draw,
    cfg: SynthConfig,
    photos: _Photos,
    photo: torch.Tensor,
    hom: torch.Tensor,
    size: int,
    extra: torch.Tensor | None,
    flip_prob: float,
) -> _Crop:
    corner = torch.linspace(0.0, size - 1.0, 2, device=d.device)  # a kernel, not a host copy (no CUDA sync)
    cxs, cys = torch.meshgrid(corner, corner, indexing="xy")
    cxs, cys = cxs.reshape(1, 1, 4), cys.reshape(1, 1, 4)
    fx, fy = _apply(hom, cxs, cys)
    if extra is not None:  # the ghost copy's footprint (shifted grid); shift 0 where no ghost
        gx, gy = _apply(hom, cxs - extra[:, 0, None, None], cys - extra[:, 1, None, None])
        fx, fy = torch.cat((fx, gx), dim=-1), torch.cat((fy, gy), dim=-1)
    x0, x1 = fx.flatten(1).amin(1), fx.flatten(1).amax(1)
    y0, y1 = fy.flatten(1).amin(1), fy.flatten(1).amax(1)
    flip = d.chance(flip_prob)
    full = photo * photos.levels
    sw, sh = photos.width[full].float(), photos.height[full].float()
    s = torch.minimum((sw - 1) / (x1 - x0), (sh - 1) / (y1 - y0)) * d.uniform(cfg.crop_zoom)
    k = torch.round(s).clamp(1, photos.levels).long()
    image = full + k - 1
    sw, sh = photos.width[image].float(), photos.height[image].float()
    s = torch.minimum(torch.minimum(s / k, (sw - 1) / (x1 - x0)), (sh - 1) / (y1 - y0))
    ox = d.uniform((0.0, 1.0))
    oy = d.uniform((0.0, 1.0))
    ox = -s * x0 + ox * ((sw - 1) - s * x1 + s * x0).clamp_min(0.0)
    oy = -s * y0 + oy * ((sh - 1) - s * y1 + s * y0).clamp_min(0.0)
    return _Crop(image=image, scale=s, ox=ox, oy=oy, flip=flip, width=sw, height=sh)


def _source_coords(hom: torch.Tensor, crop: _Crop, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source pixel of every (b, n, y, x): src(B(M_n(p))), with the flip as x -> w - 1 - x."""
    cx, cy = _apply(hom, xs, ys)
    view = (-1, 1, 1, 1)
    sx = cx * crop.scale.view(view) + crop.ox.view(view)
    sy = cy * crop.scale.view(view) + crop.oy.view(view)
    sx = torch.where(crop.flip.view(view), crop.width.view(view) - 1.0 - sx, sx)
    return sx, sy


def _canvas(photos: _Photos, image: torch.Tensor) -> torch.Tensor:
    """(B,3,Hc,Wc) float32 0..255: each sample's image on a canvas the size of the largest one,
    its last row and column repeated beyond its edges. One int32 gather per pixel reads R, G, B
    (viewed as 4 bytes, little-endian); the repeated edge makes bilinear sampling anywhere inside
    the image exactly grid_sample's padding_mode="border" on the image alone."""
    h, w = photos.height[image].view(-1, 1, 1), photos.width[image].view(-1, 1, 1)
    idx = (
        photos.base[image].view(-1, 1, 1)
        + torch.minimum(photos.rows.view(1, -1, 1), h - 1) * w
        + torch.minimum(photos.cols.view(1, 1, -1), w - 1)
    )
    rgb = torch.take(photos.packed, idx).view(torch.uint8).unflatten(-1, (-1, 4))[..., :3]
    return rgb.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)


def _bilinear(photos: _Photos, crop: _Crop, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples at source pixels (sx, sy) (B,N,H,W) -> (B,3,N,H,W) sRGB in [0,1]."""
    canvas = _canvas(photos, crop.image)
    hc, wc = canvas.shape[-2:]
    b, n, h, w = sx.shape
    grid = torch.stack((sx * (2.0 / max(wc - 1, 1)) - 1.0, sy * (2.0 / max(hc - 1, 1)) - 1.0), dim=-1)
    out = F.grid_sample(canvas, grid.view(b, n * h, w, 2), mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(b, 3, n, h, w).mul_(1.0 / 255.0)


def _flows(hom: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """flow_n(p) = M_n^{-1}(p) - p on the middle grid, (B,N,2,H,W)."""
    fx, fy = _apply(torch.linalg.inv_ex(hom).inverse, xs, ys)  # inv_ex: no error check, so no CUDA sync
    return torch.stack((fx - xs, fy - ys), dim=2)


# ---------------------------------------------------------------------------------------------
# appearance


def _colour_jitter(d: _Draw, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """datasets._colour_jitter_matrix batched: (B,3,3) m and (B,3) b for x @ m + b."""
    bright = d.uniform((0.8, 1.2))[:, None, None]
    contrast = d.uniform((0.8, 1.2))[:, None, None]
    sat = d.uniform((0.7, 1.3))[:, None, None]
    gain = torch.exp(d.normal(0.05, 3))
    eye = torch.eye(3, device=d.device)
    lum = eye[0] * _LUM[0] + eye[1] * _LUM[1] + eye[2] * _LUM[2]  # kernels only: a host tensor would sync CUDA
    sat_m = sat * eye + (1.0 - sat) * lum[:, None].expand(3, 3)[None]
    m = sat_m * contrast * bright * gain[:, None, :]
    b = (1.0 - contrast[:, 0]) * torch.einsum("bi,bij->bj", mean, sat_m) * bright[:, 0] * gain
    return m, b


def _apply_colour(x: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (B,3,N,H,W) sRGB: clip(x @ m + b) per sample and pixel (row-vector convention, as
    colour_jitter does on the photo), i.e. m^T @ x for channel-major pixels."""
    y = torch.baddbmm(b[:, :, None], m.transpose(1, 2), x.reshape(x.shape[0], 3, -1))
    return y.clamp_(0.0, 1.0).view(x.shape)


def _blur(x: torch.Tensor, sigmas: torch.Tensor, radius: int, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian blur of every (b, n) frame of x (B,3,N,H,W) with its own sigma: one grouped
    separable conv with a fixed radius (reflect padding, as synth._blur)."""
    b, c, n, h, w = x.shape
    radius = min(radius, h - 1, w - 1)
    if radius < 1:
        return x
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kern = torch.exp(-0.5 * (taps / sigmas.reshape(-1, 1).clamp_min(1e-3)) ** 2)
    kern = (kern / kern.sum(dim=1, keepdim=True)).view(b, 1, n, -1).expand(b, c, n, -1).reshape(b * c * n, -1).to(dtype)
    y = x.to(dtype).reshape(1, b * c * n, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kern[:, None, :, None], groups=b * n * c)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kern[:, None, None, :], groups=b * n * c)
    return y.reshape(b, c, n, h, w).float()


def _fresnel(cos_i: torch.Tensor, n_glass: float = 1.5) -> torch.Tensor:
    """synth._fresnel: unpolarised reflectance of a pane (two surfaces, multiple bounces)."""
    cos_i = cos_i.clamp(1e-3, 1.0)
    sin_t = torch.sqrt((1.0 - cos_i**2).clamp(0.0, 1.0)) / n_glass
    cos_t = torch.sqrt(1.0 - sin_t**2)
    rs = ((cos_i - n_glass * cos_t) / (cos_i + n_glass * cos_t)) ** 2
    rp = ((cos_t - n_glass * cos_i) / (cos_t + n_glass * cos_i)) ** 2
    r = 0.5 * (rs + rp)
    return 2.0 * r / (1.0 + r)


def _strength_map(d: _Draw, cfg: SynthConfig, hom_r: torch.Tensor, size: int) -> torch.Tensor:
    """synth._strength_map batched: a smooth gain on R's canonical plane, evaluated every 8 px
    through each frame's R homography and upsampled, (B,1,N,H,W)."""
    h = w = size
    steps = max(2, (size - 1) // 8 + 1)
    g = torch.linspace(0.0, size - 1.0, steps, device=d.device)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    qx, qy = _apply(hom_r, gx[None, None], gy[None, None])
    peak = d.uniform(cfg.strength)
    tilt = torch.deg2rad(d.uniform(cfg.glass_tilt_deg))
    tilt_dir = d.unit()
    fov = torch.deg2rad(d.uniform(cfg.fov_deg))
    mix = d.uniform(cfg.blob_mix)
    blob_c = d.uniform((0.0, 1.0), 2) * (size - 1.0)
    blob_s = d.uniform(cfg.blob_sigma) * size
    v = (-1, 1, 1, 1)
    f = (0.5 * max(h, w) / torch.tan(0.5 * fov)).view(v)
    nx, ny, nz = (torch.sin(tilt) * tilt_dir[:, 0]).view(v), (torch.sin(tilt) * tilt_dir[:, 1]).view(v), torch.cos(tilt).view(v)
    dx, dy = (qx - (w - 1) / 2.0) / f, (qy - (h - 1) / 2.0) / f
    cos_i = (dx * nx + dy * ny + nz).abs() / torch.sqrt(dx * dx + dy * dy + 1.0)
    gain = (_fresnel(cos_i) / _fresnel(torch.cos(tilt)).view(v)).clamp_max(cfg.fresnel_cap)
    blob = torch.exp(-((qx - blob_c[:, 0].view(v)) ** 2 + (qy - blob_c[:, 1].view(v)) ** 2) / (2.0 * blob_s.view(v) ** 2))
    smap = (peak.view(v) * gain * ((1.0 - mix.view(v)) + mix.view(v) * blob)).clamp(0.0, 1.0)
    b, n = smap.shape[:2]
    up = F.interpolate(smap.reshape(b * n, 1, steps, steps), size=(h, w), mode="bilinear", align_corners=True)
    return up.reshape(b, 1, n, h, w)


def _highlight_offset(t_lin: torch.Tensor, r_lin: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ERRNet: the mean overflow of T + R per sample and channel, over all its frames, (B,3,1,1,1)."""
    total = t_lin + r_lin
    over = total > 1.0
    count = over.sum(dim=(2, 3, 4)).clamp_min(1)
    mean_over = torch.where(over, total, torch.zeros((), device=total.device)).sum(dim=(2, 3, 4)) / count
    return ((mean_over - 1.0).clamp_min(0.0) * factor[:, None]).view(-1, 3, 1, 1, 1)


@dataclass
class _Glass:
    """synth.glass_gain's fitted tables, on the device once (a per-batch host tensor would sync CUDA)."""

    quantiles: torch.Tensor  # (K,)
    gain_at: torch.Tensor  # (K,)
    tint_factor: torch.Tensor  # (3,3)

    @classmethod
    def on(cls, device: torch.device) -> _Glass:
        f32 = dict(dtype=torch.float32, device=device)
        return cls(torch.tensor(GLASS_QUANTILES, **f32), torch.tensor(GLASS_GAIN_AT, **f32), torch.tensor(GLASS_TINT_FACTOR, **f32))

    def gain(self, d: _Draw) -> torch.Tensor:
        """synth.glass_gain batched, (B,3): overall gain by inverse CDF of the real pairs' fitted
        quantiles (piecewise linear, as np.interp) times a tint exp(F @ z) with its mean removed."""
        q, g = self.quantiles, self.gain_at
        u = d.uniform((GLASS_QUANTILES[0], GLASS_QUANTILES[-1]))
        i = torch.searchsorted(q, u, right=True).clamp_(1, q.numel() - 1)
        frac = (u - q[i - 1]) / (q[i] - q[i - 1])
        overall = g[i - 1] + frac * (g[i] - g[i - 1])
        tint = d.normal(1.0, 3) @ self.tint_factor.T
        return overall[:, None] * torch.exp(tint - tint.mean(dim=1, keepdim=True))


# ---------------------------------------------------------------------------------------------
# the synthesiser


def step_seed(seed: int, step: int, part: int = 0) -> int:
    """A 63-bit generator seed for (seed, step, part), well mixed (SeedSequence), so nearby
    steps do not get correlated streams."""
    if min(seed, step, part) < 0:
        raise UsageError(None, f"seed, step and part must be >= 0, got {seed}, {step}, {part}")
    return int(np.random.SeedSequence([seed, step, part]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class DeviceSynthesizer:
    """Makes batches of synthetic sequences on `device`, the dict SyntheticSequences items give,
    batched: frames, transmission_all, reflection_all (B,N,3,H,W); input, transmission,
    reflection (B,3,H,W) (the middle frame); flow_T, flow_R (B,N,2,H,W) in pixels on the middle
    frame's grid (dereflect.models.blocks.warp's convention). All float32 on `device`; images in
    [0, 1]. `batch(step, batch_size)` is a pure function of (seed, step, part, batch_size).

    photos: HxWx3 uint8 (or float [0,1], or grey HxW) of any sizes, kept on the device once.
    augment: colour jitter and flips of the sources, as SyntheticSequences(augment=True).
    half_blur: run the defocus convolution in bf16 (default: on CUDA); geometry is float32 always.
    channels_last: 4-D outputs in channels_last, 5-D ones with NHWC strides per frame (so
    x.flatten(0, 1) is channels_last too).
    """

    def __init__(
        self,
        photos: Sequence[np.ndarray],
        device: str | torch.device = "cpu",
        *,
        n_frames: int = 5,
        size: int = 256,
        config: SynthConfig | None = None,
        seed: int = 0,
        augment: bool = True,
        half_blur: bool | None = None,
        channels_last: bool = False,
    ) -> None:
        if n_frames < 3 or n_frames % 2 == 0:
            raise UsageError(None, f"n_frames must be odd and >= 3 (there must be a middle frame), got {n_frames}")
        if size < 16:
            raise UsageError(None, f"size must be at least 16 px, got {size}")
        if len(photos) == 0:
            raise DereflectError(None, "no photos to synthesise from")
        self.device = torch.device(device)
        self.n_frames, self.size, self.seed, self.augment = n_frames, size, seed, augment
        self.config = config or SynthConfig()
        self.channels_last = channels_last
        half = self.device.type == "cuda" if half_blur is None else half_blur
        self.blur_dtype = torch.bfloat16 if half else torch.float32
        self.photos = _load_photos(photos, size, self.device)
        self._glass = _Glass.on(self.device)
        px = size / 256.0
        cfg = self.config
        self._sigma_cap = cfg.blur_sigma[1] * px * math.exp(3.0 * cfg.blur_jitter)
        self._radius = int(math.ceil(3.0 * self._sigma_cap))
        ys, xs = torch.meshgrid(
            torch.arange(size, dtype=torch.float32, device=self.device),
            torch.arange(size, dtype=torch.float32, device=self.device),
            indexing="ij",
        )
        self._xs, self._ys = xs[None, None], ys[None, None]  # (1,1,H,W)

    @property
    def memory_bytes(self) -> int:
        """Device memory the photo buffer holds (4 bytes per pixel, all shrink levels)."""
        return self.photos.packed.numel() * 4

    def generator(self, step: int, part: int = 0) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(step_seed(self.seed, step, part))

    @torch.no_grad()
    def batch(self, step: int, batch_size: int, *, part: int = 0, noise: bool = True) -> dict[str, torch.Tensor]:
        """The batch of training step `step` (part: e.g. the DDP rank, for a distinct share)."""
        if batch_size < 1:
            raise UsageError(None, f"batch_size must be >= 1, got {batch_size}")
        d = _Draw(self.generator(step, part), self.device, batch_size)
        layers, flows = self._layers(d, noise)
        return self._outputs(layers, flows)

    def batches(self, start: int, stop: int, batch_size: int, *, part: int = 0) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(step, batch) for steps [start, stop), each equal to batch(step, ...). On CUDA the next
        batch is queued on a side stream before this one is handed out, so its synthesis overlaps
        the caller's training step instead of adding to it; elsewhere this is a plain loop."""
        if self.device.type != "cuda":
            for step in range(start, stop):
                yield step, self.batch(step, batch_size, part=part)
            return
        main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)

        def queue(step: int) -> dict[str, torch.Tensor]:
            with torch.cuda.stream(side):
                return self.batch(step, batch_size, part=part)

        ahead = queue(start) if start < stop else None
        for step in range(start, stop):
            ready = ahead
            main.wait_stream(side)  # the training step's kernels start after this batch is made
            for v in ready.values():
                v.record_stream(main)  # made on `side`, used on `main`: keep the allocator from reusing it early
            ahead = queue(step + 1) if step + 1 < stop else None
            yield step, ready

    # -- the recipe, batched ------------------------------------------------------------------
    def _layers(self, d: _Draw, noise: bool) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        cfg, n, size, ph = self.config, self.n_frames, self.size, self.photos
        px = size / 256.0
        ti = torch.randint(ph.count, (d.batch,), generator=d.gen, device=d.device)
        ri = (ti + torch.randint(1, max(ph.count, 2), (d.batch,), generator=d.gen, device=d.device)) % ph.count
        jit_t = _colour_jitter(d, ph.mean[ti]) if self.augment else None
        jit_r = _colour_jitter(d, ph.mean[ri]) if self.augment else None
        hom_t, hom_r = _motion(d, cfg, n, size)
        ghost = d.chance(cfg.ghost_prob)
        g_shift = d.unit() * (d.uniform(cfg.ghost_shift) * px)[:, None] * ghost[:, None]
        g_weight = d.uniform(cfg.ghost_weight) * ghost
        flip_prob = cfg.flip_prob if self.augment else 0.0
        crop_t = _fit_crop(d, cfg, ph, ti, hom_t, size, None, flip_prob)
        crop_r = _fit_crop(d, cfg, ph, ri, hom_r, size, g_shift, flip_prob)
        jitter = d.normal(cfg.blur_jitter, n).clamp(-3 * cfg.blur_jitter, 3 * cfg.blur_jitter)  # the kernel radius covers +3 std
        sigmas = (d.uniform(cfg.blur_sigma) * px)[:, None] * torch.exp(jitter)
        smap = _strength_map(d, cfg, hom_r, size)
        tint = torch.exp(d.normal(cfg.tint, 3))
        tint = tint / tint.mean(dim=1, keepdim=True)
        glass = self._glass.gain(d)
        hl_att = d.uniform(cfg.highlight_att)
        shot, read = d.uniform(cfg.shot_noise), d.uniform(cfg.read_noise)

        xs, ys = self._xs, self._ys
        scene = self._sample(crop_t, hom_t, xs, ys, jit_t)
        t_lin = scene * glass.view(-1, 3, 1, 1, 1)
        r_lin = self._sample(crop_r, hom_r, xs, ys, jit_r)
        gsx, gsy = xs - g_shift[:, 0].view(-1, 1, 1, 1), ys - g_shift[:, 1].view(-1, 1, 1, 1)
        r_ghost = self._sample(crop_r, hom_r, gsx, gsy, jit_r)
        r_lin = torch.lerp(r_lin, r_ghost, g_weight.view(-1, 1, 1, 1, 1))
        del r_ghost
        r_lin = _blur(r_lin, sigmas, self._radius, self.blur_dtype)
        offset = _highlight_offset(t_lin, r_lin, hl_att)
        r_lin = (r_lin - offset).clamp_(0.0, 1.0).mul_(smap).mul_(tint.view(-1, 3, 1, 1, 1))
        blend = t_lin + r_lin
        transmission = linear_to_srgb(t_lin.clamp_(0.0, 1.0))
        reflection = (linear_to_srgb(blend.clamp(0.0, 1.0)) - transmission).clamp_(0.0, 1.0)
        if not cfg.glass_in_label:  # the label is the scene without the glass, as real pairs' ground truth
            transmission = linear_to_srgb(scene)
        del scene
        if noise:
            std = torch.sqrt(shot.view(-1, 1, 1, 1, 1) * blend.clamp_min(0.0) + (read * read).view(-1, 1, 1, 1, 1))
            eps = torch.randn(blend.shape, generator=d.gen, device=d.device)
            blend = blend.add_(eps.mul_(std))
        frames = linear_to_srgb(blend.clamp_(0.0, 1.0))
        flows = (_flows(hom_t, xs, ys), _flows(hom_r, xs, ys))
        return {"frames": frames, "transmission_all": transmission, "reflection_all": reflection}, flows

    def _sample(
        self, crop: _Crop, hom: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, jitter: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """One layer in linear light, (B,3,N,H,W): sample in sRGB, colour jitter, decode."""
        sx, sy = _source_coords(hom, crop, xs, ys)
        x = _bilinear(self.photos, crop, sx, sy)
        if jitter is not None:
            x = _apply_colour(x, *jitter)
        return srgb_to_linear(x)

    def _outputs(self, layers: dict[str, torch.Tensor], flows: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = self.n_frames // 2
        out = {k: v.transpose(1, 2) for k, v in layers.items()}  # work layout (B,3,N,H,W) -> (B,N,3,H,W)
        out["flow_T"], out["flow_R"] = flows
        out["input"] = out["frames"][:, m]
        out["transmission"] = out["transmission_all"][:, m]
        out["reflection"] = out["reflection_all"][:, m]
        return {k: self._layout(out[k]) for k in KEYS}

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """(B,N,C,H,W) or (B,C,H,W) in the memory layout asked for (one copy at most)."""
        if not self.channels_last:
            return x.contiguous()
        if x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
