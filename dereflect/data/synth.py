"""Multi-view sequences through glass, with their layers and true flows known by construction.

The teacher learns how transmission (T) and reflection (R) move differently while the camera
moves, so it needs sequences in which both layers and their motions are known. One recipe makes
them (single-image samples for the student are the middle frames of the same process):

1. Motion. A smooth camera path c(t) = e1*t + k*e2*t^2 over t in [-1, 1] (middle frame t = 0).
   Hand shake adds a small per-frame offset. Each layer L gets a homography per frame, M_L(t) = shared camera part (in-plane rotation,
   zoom, slight perspective) composed with a layer translation: T, a far plane, moves by
   k_T*c(t); R, the virtual image at another depth, moves by lambda*k_T*c(t) plus a path of its
   own (lambda is often negative: the reflection moves the opposite way). M_L maps a pixel of
   frame i to the layer's canonical plane, which is the middle frame's pixel grid (M(0) = I).
2. Sampling. Each layer's source photo is cropped by an affine B (scale, offset, flip) chosen so
   that every frame's footprint lies inside the photo; frame i samples src(B(M_i(p))) with one
   bilinear remap. The flow to the middle frame is then exact:
   flow_i(p) = M_i^{-1}(p) - p, since warp(layer_i, flow_i)(p) = layer_i(M_i^{-1}(p)) = src(B(p)).
   Flows live on the middle grid, channel 0 = dx, 1 = dy (dereflect.models.blocks.warp).
3. Reflection appearance, in linear light (sRGB transfer function): optional ghosting (a
   shifted, attenuated second copy from the glass's back surface), defocus blur (a sequence
   sigma with a small per-frame jitter), ERRNet-style highlight handling (Wei et al., CVPR 2019:
   where T + R overflows, R is lowered by the mean overflow, per channel, once per sequence),
   then a smooth Fresnel-like strength map (reflectance of a tilted pane over the field of
   view, times a soft random blob) and a colour tint. The strength map is evaluated on R's
   canonical coordinates, so it travels with R and keeps R warp-consistent.
4. Blend: I = g*T + R in linear light (g = per-channel glass transform, `glass_gain`: real
   pairs' attenuation, tint and exposure change), sensor noise (shot + read, linear light),
   sRGB gamma, clip to [0, 1].

What the stored layers are (all sRGB-encoded, [0, 1]):
- transmission[i] = gamma(g * T_lin_i): the scene as seen through the glass (glass included), with
  the default `glass_in_label=True`; with False, gamma(T_lin_i): the scene without the glass, as
  real pairs' ground truth is shot (then frames = gamma(g*T) + reflection, not transmission + R).
- reflection[i] = gamma(clip(g*T_lin_i + R_lin_i, 0, 1)) - gamma(g*T_lin_i): the gamma-space
  residual the reflection adds. So frames[i] == transmission[i] + reflection[i] up to the sensor
  noise (exactly, with noise off), which the teacher's view-synthesis loss relies on.
  Because gamma is not linear, this residual is modulated by the T underneath it (a reflection
  shows more over dark T). With a flat T it is a pure function of R_lin, which is how the tests
  check R's flows; over textured T, warping neighbour R by flow_R reproduces the middle R only
  approximately.

Everything numeric is numpy float64 for the geometry and torch (CPU) for the per-pixel work:
grid_sample and a grouped separable convolution are ~5x faster here than scipy.ndimage.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dereflect.errors import DereflectError, UsageError
from dereflect.files import atomic_output, write_bytes_atomic
from dereflect.images import read_rgb_float, write_image

Range = tuple[float, float]


@dataclass(frozen=True)
class SynthConfig:
    """Every range the synthesis draws from. Pixel quantities are for a 256-px frame and scale
    with the frame size, so a 128-px and a 512-px sequence look alike."""

    # motion (pixels at the end frames, t = +-1)
    # (real 5-frame hand-held sequences, Liu et al. 2020, scaled to 256 px: 5-25 px end to middle)
    t_shift: Range = (2.0, 14.0)  # translation of the far plane (T)
    path_curvature: float = 0.6  # |quadratic term| relative to the linear one
    path_jitter: float = 0.15  # hand shake: per-frame offset (std) relative to the shift
    r_opposite_prob: float = 0.6  # chance that R moves against T
    r_opposite: Range = (0.5, 2.0)  # |lambda| when R moves against T
    r_same: Range = (1.5, 3.0)  # lambda when R moves with T (kept away from 1: relative motion)
    r_own_path: float = 0.4  # R's own path, relative to T's shift
    min_r_shift: float = 2.0  # R moves at least this far relative to T at the end frames
    rotation_deg: float = 0.8  # shared in-plane rotation at the end frames
    zoom: float = 0.015  # shared zoom at the end frames
    r_zoom: float = 0.01  # extra zoom of R (different depth)
    perspective: float = 0.01  # shared keystone: relative scale change edge-to-edge
    crop_zoom: Range = (0.45, 1.0)  # crop scale as a fraction of the largest that fits
    flip_prob: float = 0.5  # horizontal flip of each source photo
    # reflection appearance
    blur_sigma: Range = (0.3, 3.0)  # defocus of R, pixels
    blur_jitter: float = 0.12  # per-frame log-normal jitter of the sigma
    ghost_prob: float = 0.35
    ghost_shift: Range = (2.0, 7.0)  # pixels
    ghost_weight: Range = (0.2, 0.45)  # share of the second copy
    strength: Range = (0.15, 0.65)  # R's linear-light gain at the image centre
    glass_tilt_deg: Range = (0.0, 50.0)
    fov_deg: Range = (50.0, 75.0)
    fresnel_cap: float = 3.0  # cap of the Fresnel gain relative to the centre
    blob_mix: Range = (0.0, 0.6)  # share of a soft random blob in the strength map
    blob_sigma: Range = (0.3, 0.9)  # its width, relative to the frame size
    tint: float = 0.06  # std of the per-channel tint of R (glass colour)
    t_attenuation: Range = (0.85, 1.0)  # unused since glass_gain (kept for device_synth until it mirrors it)
    glass_in_label: bool = True  # transmission label includes the glass (teacher: frames = T + R); False: as real GT
    highlight_att: Range = (1.08, 1.18)  # ERRNet's overflow factor
    # sensor noise, linear light: std = sqrt(shot * I + read^2)
    shot_noise: Range = (0.0, 6e-4)
    read_noise: Range = (0.0, 2e-3)


@dataclass
class SynthSequence:
    """One synthetic sequence: numpy float32, frames/layers (N,H,W,3) in [0,1], flows (N,H,W,2)
    in pixels on the middle frame's grid (warp(layer[i], flow[i]) ~ layer[middle])."""

    frames: np.ndarray
    transmission: np.ndarray
    reflection: np.ndarray
    flow_T: np.ndarray
    flow_R: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def middle(self) -> int:
        return self.frames.shape[0] // 2


# ---------------------------------------------------------------------------------------------
# colour


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1 decoding; its linear toe keeps dark-pixel noise finite (a pure 2.2 power
    would amplify it without bound)."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """sRGB encoding. The curve's power branch lies above its linear toe exactly where the toe
    applies (and below elsewhere), so min() of the two picks the right one without a mask."""
    y = x.clamp_min(0.0031308).pow_(1 / 2.4).mul_(1.055).sub_(0.055)
    return torch.minimum(y, x * 12.92, out=y)


# ---------------------------------------------------------------------------------------------
# geometry


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _unit(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0.0, 2.0 * math.pi)
    return np.array([math.cos(a), math.sin(a)])


def _layer_homography(t: float, shift: np.ndarray, rot: float, zoom: float, persp: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Frame pixel -> canonical (middle-frame) pixel, built in centred coordinates."""
    z = 1.0 + zoom * t
    c, s = math.cos(rot * t), math.sin(rot * t)
    a = np.array([[z * c, -z * s, shift[0]], [z * s, z * c, shift[1]], [persp[0] * t, persp[1] * t, 1.0]])
    to_c = np.array([[1.0, 0.0, -centre[0]], [0.0, 1.0, -centre[1]], [0.0, 0.0, 1.0]])
    from_c = np.array([[1.0, 0.0, centre[0]], [0.0, 1.0, centre[1]], [0.0, 0.0, 1.0]])
    return from_c @ a @ to_c


@lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def _apply(hs: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply (N,3,3) homographies to a pixel grid -> X, Y of shape (N,H,W) (float32 for grids:
    1e-4 px is far below what bilinear sampling resolves)."""
    h = hs[:, :, :, None, None].astype(xs.dtype)
    den = h[:, 2, 0] * xs + h[:, 2, 1] * ys + h[:, 2, 2]
    return (h[:, 0, 0] * xs + h[:, 0, 1] * ys + h[:, 0, 2]) / den, (h[:, 1, 0] * xs + h[:, 1, 1] * ys + h[:, 1, 2]) / den


def _draw_motion(
    rng: np.random.Generator, cfg: SynthConfig, n: int, h: int, w: int, px: float
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Per-frame homographies of T and R (frame -> canonical) and what was drawn."""
    times = (np.arange(n) - n // 2) / (n // 2)
    shake = rng.normal(0.0, cfg.path_jitter, size=(n, 2))
    shake[n // 2] = 0.0
    e1, e2, e3, e4 = _unit(rng), _unit(rng), _unit(rng), _unit(rng)
    k_path = rng.uniform(-cfg.path_curvature, cfg.path_curvature)
    k_own = rng.uniform(-cfg.path_curvature, cfg.path_curvature)
    k_t = _uniform(rng, cfg.t_shift) * px
    if rng.random() < cfg.r_opposite_prob:
        lam = -_uniform(rng, cfg.r_opposite)
    else:
        lam = _uniform(rng, cfg.r_same)
    own = cfg.r_own_path * k_t
    rot = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    zoom = rng.uniform(-cfg.zoom, cfg.zoom)
    r_zoom = zoom + rng.uniform(-cfg.r_zoom, cfg.r_zoom)
    persp = rng.uniform(-cfg.perspective, cfg.perspective, size=2) / (0.5 * np.array([w, h]))
    # R must move relative to T, or the teacher has nothing to separate: push lambda away from 1
    # when the drawn parallax leaves the layers nearly together at the end frames.
    min_rel = cfg.min_r_shift * px
    if abs(lam - 1.0) * k_t < min_rel:
        lam = 1.0 + math.copysign(min_rel / k_t, lam - 1.0)
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    h_t, h_r = [], []
    for t, jit in zip(times, shake):
        cam = e1 * t + k_path * e2 * t * t + jit
        h_t.append(_layer_homography(t, k_t * cam, rot, zoom, persp, centre))
        r_shift = lam * k_t * cam + own * (e3 * t + k_own * e4 * t * t)
        h_r.append(_layer_homography(t, r_shift, rot, r_zoom, persp, centre))
    params = {
        "times": times.tolist(),
        "shake": shake.tolist(),
        "path_dir": e1.tolist(),
        "path_curve": (k_path * e2).tolist(),
        "t_shift_px": k_t,
        "r_parallax": lam,
        "r_own_path_px": own,
        "r_own_dir": e3.tolist(),
        "rotation_deg": math.degrees(rot),
        "zoom": zoom,
        "r_zoom": r_zoom,
        "perspective": persp.tolist(),
    }
    return np.stack(h_t), np.stack(h_r), params


def _fit_crop(
    rng: np.random.Generator, cfg: SynthConfig, src: np.ndarray, hs: np.ndarray, h: int, w: int, extra: np.ndarray | None = None
) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """Choose the source crop covering every frame's footprint; return the (pre-shrunk) source
    as a (1,3,h,w) tensor and the affine canonical -> source pixel (3x3)."""
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    cx, cy = _apply(hs, corners[:, 0][None], corners[:, 1][None])
    xs, ys = [cx.ravel()], [cy.ravel()]
    if extra is not None:  # footprint of the ghost copy (shifted grid)
        gx, gy = _apply(hs, corners[:, 0][None] - extra[0], corners[:, 1][None] - extra[1])
        xs.append(gx.ravel())
        ys.append(gy.ravel())
    x0, x1 = min(a.min() for a in xs), max(a.max() for a in xs)
    y0, y1 = min(a.min() for a in ys), max(a.max() for a in ys)
    flip = bool(rng.random() < cfg.flip_prob)
    sh, sw = src.shape[:2]
    s_max = min((sw - 1) / (x1 - x0), (sh - 1) / (y1 - y0))
    s = s_max * _uniform(rng, cfg.crop_zoom)
    k = max(1, int(round(s)))  # shrink by whole blocks first: bilinear sampling must not alias
    if flip:
        src = src[:, ::-1]
    if k > 1:
        sh2, sw2 = sh // k, sw // k
        src = src[: sh2 * k, : sw2 * k].reshape(sh2, k, sw2, k, 3).mean(axis=(1, 3), dtype=np.float32)
        sh, sw = sh2, sw2
        s = min(s / k, (sw - 1) / (x1 - x0), (sh - 1) / (y1 - y0))
    ox = rng.uniform(-s * x0, max(-s * x0, (sw - 1) - s * x1))
    oy = rng.uniform(-s * y0, max(-s * y0, (sh - 1) - s * y1))
    info = {"scale": s * k, "shrink": k, "offset": [ox * k, oy * k], "flip": flip}
    # keep only the footprint (+1 px): linearising and sampling then touch no unused pixels
    cx0, cy0 = max(0, int(math.floor(s * x0 + ox)) - 1), max(0, int(math.floor(s * y0 + oy)) - 1)
    cx1, cy1 = min(sw, int(math.ceil(s * x1 + ox)) + 2), min(sh, int(math.ceil(s * y1 + oy)) + 2)
    src = src[cy0:cy1, cx0:cx1]
    affine = np.array([[s, 0.0, ox - cx0], [0.0, s, oy - cy0], [0.0, 0.0, 1.0]])
    tensor = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    return srgb_to_linear(tensor), affine, info


def _sample(src: torch.Tensor, hs: np.ndarray, h: int, w: int, shift: np.ndarray | None = None) -> torch.Tensor:
    """One bilinear remap per frame: out_i(p) = src(H_i(p - shift)); hs maps frame -> source pixels."""
    xs, ys = _pixel_grid(h, w)
    if shift is not None:
        xs, ys = xs - shift[0], ys - shift[1]
    sx, sy = _apply(hs, xs, ys)
    sh, sw = src.shape[-2:]
    grid = np.stack((sx * (2.0 / (sw - 1)) - 1.0, sy * (2.0 / (sh - 1)) - 1.0), axis=-1).astype(np.float32)
    n = hs.shape[0]
    return F.grid_sample(src.expand(n, -1, -1, -1), torch.from_numpy(grid), mode="bilinear", padding_mode="border", align_corners=True)


def _flows(hs: np.ndarray, h: int, w: int) -> np.ndarray:
    """flow_i(p) = M_i^{-1}(p) - p on the middle grid, (N,H,W,2) float32."""
    xs, ys = _pixel_grid(h, w)
    fx, fy = _apply(np.linalg.inv(hs), xs, ys)
    return np.stack((fx - xs, fy - ys), axis=-1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# reflection appearance


def _blur(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Gaussian blur of each frame (N,3,H,W) with its own sigma: one grouped separable conv."""
    n, c, h, w = x.shape
    radius = int(math.ceil(3.0 * float(sigmas.max())))
    if radius < 1:
        return x
    radius = min(radius, h - 1, w - 1)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kern = np.exp(-0.5 * (taps[None] / np.maximum(sigmas[:, None], 1e-3)) ** 2)
    kern /= kern.sum(axis=1, keepdims=True)
    k = torch.from_numpy(np.repeat(kern, c, axis=0).astype(np.float32))  # (N*3, taps)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    return y.reshape(n, c, h, w)


def _fresnel(cos_i: np.ndarray, n_glass: float = 1.5) -> np.ndarray:
    """Unpolarised reflectance of a pane (two surfaces, multiple bounces) at incidence cos_i."""
    cos_i = np.clip(cos_i, 1e-3, 1.0)
    sin_t = np.sqrt(np.clip(1.0 - cos_i**2, 0.0, 1.0)) / n_glass
    cos_t = np.sqrt(1.0 - sin_t**2)
    rs = ((cos_i - n_glass * cos_t) / (cos_i + n_glass * cos_t)) ** 2
    rp = ((cos_t - n_glass * cos_i) / (cos_t + n_glass * cos_i)) ** 2
    r = 0.5 * (rs + rp)
    return 2.0 * r / (1.0 + r)


def _strength_map(rng: np.random.Generator, cfg: SynthConfig, hom_r: np.ndarray, h: int, w: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Smooth, Fresnel-like gain of R, (N,1,H,W), a function on R's canonical plane seen through
    each frame's R homography (so it moves with R). It is smooth, so it is evaluated every
    `step` pixels and interpolated bilinearly (exact at the nodes, ~1e-4 between them)."""
    step = 8
    gy = np.linspace(0.0, h - 1.0, max(2, (h - 1) // step + 1), dtype=np.float32)
    gx = np.linspace(0.0, w - 1.0, max(2, (w - 1) // step + 1), dtype=np.float32)
    qx, qy = _apply(hom_r, *np.meshgrid(gx, gy))
    peak = _uniform(rng, cfg.strength)
    tilt = math.radians(_uniform(rng, cfg.glass_tilt_deg))
    tilt_dir = _unit(rng)
    fov = math.radians(_uniform(rng, cfg.fov_deg))
    mix = _uniform(rng, cfg.blob_mix)
    blob_c = rng.uniform(0.0, 1.0, size=2) * np.array([w - 1, h - 1])
    blob_s = _uniform(rng, cfg.blob_sigma) * max(h, w)
    f = 0.5 * max(h, w) / math.tan(0.5 * fov)
    normal = np.array([math.sin(tilt) * tilt_dir[0], math.sin(tilt) * tilt_dir[1], math.cos(tilt)])
    dx, dy = (qx - (w - 1) / 2.0) / f, (qy - (h - 1) / 2.0) / f
    cos_i = np.abs(dx * normal[0] + dy * normal[1] + normal[2]) / np.sqrt(dx * dx + dy * dy + 1.0)
    gain = np.minimum(_fresnel(cos_i) / _fresnel(np.array(math.cos(tilt))), cfg.fresnel_cap)
    blob = np.exp(-((qx - blob_c[0]) ** 2 + (qy - blob_c[1]) ** 2) / (2.0 * blob_s**2))
    smap = peak * gain * ((1.0 - mix) + mix * blob)
    params = {
        "peak": peak,
        "glass_tilt_deg": math.degrees(tilt),
        "tilt_dir": tilt_dir.tolist(),
        "fov_deg": math.degrees(fov),
        "blob_mix": mix,
        "blob_centre": blob_c.tolist(),
        "blob_sigma": blob_s,
    }
    coarse = torch.from_numpy(np.clip(smap, 0.0, 1.0).astype(np.float32)).unsqueeze(1)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True), params


# ---------------------------------------------------------------------------------------------
# the glass

# Fitted on saggy361's TRAINING scenes (903 pairs, 96 scenes; `tools/fit_glass.py --shared
# ../shared/data`): per pair, the per-channel linear gain g with blended = g*T where the photo
# has no reflection (the mode of log(blended/T)). Real ground truth is shot without the glass,
# so g holds the glass' attenuation and tint *and* the exposure/white-balance change between the
# two shots; all of it is what a model must undo on real pairs. Overall gain (geometric mean of
# the channels) at the quantiles GLASS_QUANTILES: median 0.95 (5 % darker), a long dark tail
# (10 % of pairs below 0.66), 10 % brighter than 1.04. Tint = log gain per channel minus the
# mean: std R 0.071, G 0.057, B 0.098, red and blue strongly anti-correlated (a colour
# temperature shift); GLASS_TINT_FACTOR is the symmetric square root of its covariance.
GLASS_QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
GLASS_GAIN_AT = (0.331, 0.482, 0.656, 0.794, 0.873, 0.915, 0.95, 0.969, 0.988, 1.008, 1.039, 1.078, 1.307)
GLASS_TINT_FACTOR = ((0.0544, -0.0096, -0.0448), (-0.0096, 0.0446, -0.035), (-0.0448, -0.035, 0.0798))


def glass_gain(rng: np.random.Generator) -> np.ndarray:
    """Per-channel linear gain of T through the glass, drawn from real pairs' distribution (see
    above): overall gain by inverse CDF of the fitted quantiles, times a tint exp(GLASS_TINT_FACTOR @ z).
    Replaces the old uniform scalar attenuation, under which labels said "never brighten or
    re-colour" while real labels say "brighten by 5 % on average and undo a colour shift"."""
    overall = float(np.interp(rng.uniform(), GLASS_QUANTILES, GLASS_GAIN_AT))  # the 1 % tails sit on the end values
    tint = np.asarray(GLASS_TINT_FACTOR) @ rng.standard_normal(3)
    return (overall * np.exp(tint - tint.mean())).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the recipe


def as_photo(x: np.ndarray, name: str) -> np.ndarray:
    """Any photo (grey, RGBA, uint8/uint16/float) -> float32 HxWx3 in [0, 1]; one line naming `name` when it is not one."""
    a = np.asarray(x)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise DereflectError(None, f"{name}: expected an HxWx3 photo, got shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535.0
    a = np.asarray(a, dtype=np.float32)
    if min(a.shape[:2]) < 8:
        raise DereflectError(None, f"{name}: photo of {a.shape[1]}x{a.shape[0]} px is too small (min 8 px)")
    return np.clip(a, 0.0, 1.0)


def synthesize_sequence(
    t_src: np.ndarray, r_src: np.ndarray, *, n_frames: int = 5, size: int = 256, rng: np.random.Generator, config: SynthConfig | None = None
) -> SynthSequence:
    """Make an `n_frames` sequence (odd, >= 3) of `size` x `size` frames through glass from a
    transmission photo and a reflection photo (float [0,1] HWC or uint8). Deterministic for the
    state of `rng`. See the module docstring for the recipe and what each output means."""
    if n_frames < 3 or n_frames % 2 == 0:
        raise UsageError(None, f"n_frames must be odd and >= 3 (there must be a middle frame), got {n_frames}")
    if size < 16:
        raise UsageError(None, f"size must be at least 16 px, got {size}")
    cfg = config or SynthConfig()
    t_src, r_src = as_photo(t_src, "transmission source"), as_photo(r_src, "reflection source")
    n, h, w = n_frames, size, size
    px = size / 256.0

    hom_t, hom_r, motion = _draw_motion(rng, cfg, n, h, w, px)
    ghost = None
    if rng.random() < cfg.ghost_prob:
        ghost = {"shift": (_unit(rng) * _uniform(rng, cfg.ghost_shift) * px).tolist(), "weight": _uniform(rng, cfg.ghost_weight)}
    ghost_shift = None if ghost is None else np.array(ghost["shift"])
    src_t, aff_t, crop_t = _fit_crop(rng, cfg, t_src, hom_t, h, w)
    src_r, aff_r, crop_r = _fit_crop(rng, cfg, r_src, hom_r, h, w, extra=ghost_shift)

    sigma0 = _uniform(rng, cfg.blur_sigma) * px
    sigmas = sigma0 * np.exp(rng.normal(0.0, cfg.blur_jitter, size=n)) if cfg.blur_jitter > 0 else np.full(n, sigma0)
    smap, strength = _strength_map(rng, cfg, hom_r, h, w)
    tint = np.exp(rng.normal(0.0, cfg.tint, size=3)) if cfg.tint > 0 else np.ones(3)
    tint = tint / tint.mean()
    att = glass_gain(rng)
    hl_att = _uniform(rng, cfg.highlight_att)
    shot, read = _uniform(rng, cfg.shot_noise), _uniform(rng, cfg.read_noise)
    noise = torch.randn((n, h, w, 3), generator=torch.Generator().manual_seed(int(rng.integers(2**62))))

    with torch.no_grad():
        scene = _sample(src_t, np.einsum("ij,njk->nik", aff_t, hom_t), h, w)
        t_lin = scene * torch.from_numpy(att).view(1, 3, 1, 1)
        full_r = np.einsum("ij,njk->nik", aff_r, hom_r)
        r_lin = _sample(src_r, full_r, h, w)
        if ghost is not None:
            r_ghost = _sample(src_r, full_r, h, w, shift=ghost_shift)
            r_lin = torch.lerp(r_lin, r_ghost, ghost["weight"])
        r_lin = _blur(r_lin, sigmas)
        # ERRNet's highlight handling: lower R by the mean overflow of T + R, per channel (here once
        # per sequence, so every frame gets the same correction and R stays warp-consistent).
        total = t_lin + r_lin
        over = total > 1.0
        count = over.sum(dim=(0, 2, 3)).clamp_min(1)
        mean_over = torch.where(over, total, torch.zeros(())).sum(dim=(0, 2, 3)) / count
        offset = (mean_over - 1.0).clamp_min(0.0) * hl_att
        r_lin = (r_lin - offset.view(1, 3, 1, 1)).clamp(0.0, 1.0)
        r_lin = r_lin * smap * torch.from_numpy(tint.astype(np.float32)).view(1, 3, 1, 1)
        # from here on NHWC, the layout the outputs are stored in
        t_lin = t_lin.permute(0, 2, 3, 1).contiguous()
        r_lin = r_lin.permute(0, 2, 3, 1).contiguous()
        blend = t_lin + r_lin
        transmission = linear_to_srgb(t_lin.clamp(0.0, 1.0))
        clean = linear_to_srgb(blend.clamp(0.0, 1.0))
        reflection = (clean - transmission).clamp(0.0, 1.0)
        if not cfg.glass_in_label:
            transmission = linear_to_srgb(scene.permute(0, 2, 3, 1))
        noisy = blend + noise * torch.sqrt(shot * blend.clamp_min(0.0) + read * read)
        frames = linear_to_srgb(noisy.clamp(0.0, 1.0))

    params = {
        "n_frames": n,
        "size": size,
        "transfer": "sRGB",
        "motion": motion,
        "homography_T": hom_t.tolist(),
        "homography_R": hom_r.tolist(),
        "crop_T": crop_t,
        "crop_R": crop_r,
        "blur_sigma": sigmas.tolist(),
        "ghost": ghost,
        "strength": strength,
        "tint": tint.tolist(),
        "glass_gain": att.tolist(),
        "glass_in_label": cfg.glass_in_label,
        "highlight_offset": offset.tolist(),
        "highlight_att": hl_att,
        "noise": {"shot": shot, "read": read},
        "reflection_is": "srgb(clip(g*T_lin + R_lin)) - srgb(g*T_lin): frames = srgb(g*T_lin) + reflection + noise",
    }
    return SynthSequence(
        frames=frames.numpy(),
        transmission=transmission.numpy(),
        reflection=reflection.numpy(),
        flow_T=_flows(hom_t, h, w),
        flow_R=_flows(hom_r, h, w),
        params=params,
    )


# ---------------------------------------------------------------------------------------------
# files


def write_sequence(seq: SynthSequence, folder: str | os.PathLike[str]) -> Path:
    """Write the sequence layout: frame_000.png (8-bit, what a camera gives), transmission/ and
    reflection/ frame_000.png (16-bit, so frames ~= T + R survives storage), flow_T.npy,
    flow_R.npy (N,H,W,2 float32) and params.json."""
    folder = Path(folder)
    (folder / "transmission").mkdir(parents=True, exist_ok=True)
    (folder / "reflection").mkdir(parents=True, exist_ok=True)
    for i in range(seq.frames.shape[0]):
        name = f"frame_{i:03d}.png"
        write_image(folder / name, _quantize(seq.frames[i], np.uint8))
        write_image(folder / "transmission" / name, _quantize(seq.transmission[i], np.uint16))
        write_image(folder / "reflection" / name, _quantize(seq.reflection[i], np.uint16))
    _write_npy(folder / "flow_T.npy", seq.flow_T.astype(np.float32))
    _write_npy(folder / "flow_R.npy", seq.flow_R.astype(np.float32))
    write_bytes_atomic(folder / "params.json", json.dumps(seq.params, indent=1).encode())
    return folder


def read_sequence(folder: str | os.PathLike[str]) -> SynthSequence:
    """Read what write_sequence wrote (all layers and flows must be there)."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.glob("frame_*.png"))
    if not names:
        raise DereflectError(folder, "no frame_*.png files: not a sequence folder")
    frames = np.stack([read_rgb_float(folder / n) for n in names])
    layers = []
    for sub in ("transmission", "reflection"):
        missing = [n for n in names if not (folder / sub / n).is_file()]
        if missing:
            raise DereflectError(folder / sub, f"missing {', '.join(missing)}")
        layers.append(np.stack([read_rgb_float(folder / sub / n) for n in names]))
    flows = [_read_flow(folder / f"flow_{k}.npy", frames.shape) for k in ("T", "R")]
    params_path = folder / "params.json"
    try:
        params = json.loads(params_path.read_text()) if params_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise DereflectError(params_path, f"unreadable: {exc}") from exc
    return SynthSequence(frames=frames, transmission=layers[0], reflection=layers[1], flow_T=flows[0], flow_R=flows[1], params=params)


def _read_flow(path: Path, frames_shape: tuple[int, ...]) -> np.ndarray:
    try:
        flow = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DereflectError(path, f"unreadable flow file: {exc}") from exc
    expected = (*frames_shape[:3], 2)
    if flow.shape != expected:
        raise DereflectError(path, f"flow of shape {flow.shape}, expected {expected} to match the frames")
    return flow.astype(np.float32)


def _quantize(x: np.ndarray, dtype: type) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.round(np.clip(x, 0.0, 1.0) * top).astype(dtype)


def _write_npy(path: Path, a: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, a, allow_pickle=False)


def contact_sheet(seqs: list[SynthSequence], gap: int = 4) -> np.ndarray:
    """uint8 HWC sheet for a person to judge the data: one row per sequence, columns = the
    frames, then the middle T and the middle R (R as stored, no gain: what the glass adds)."""
    from PIL import Image, ImageDraw

    n = max(s.frames.shape[0] for s in seqs)
    h = max(s.frames.shape[1] for s in seqs)
    w = max(s.frames.shape[2] for s in seqs)
    head = 14
    sheet = np.full((head + len(seqs) * (h + gap), (n + 2) * (w + gap), 3), 255, np.uint8)
    for r, s in enumerate(seqs):
        m = s.middle
        tiles = [*s.frames, s.transmission[m], s.reflection[m]]
        for c, tile in enumerate(tiles):
            y, x = head + r * (h + gap), c * (w + gap)
            sheet[y : y + tile.shape[0], x : x + tile.shape[1]] = _quantize(tile, np.uint8)
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    labels = [f"frame {i}" for i in range(n)] + ["T (middle)", "R (middle)"]
    for c, label in enumerate(labels):
        draw.text((c * (w + gap) + 2, 1), label, fill=(0, 0, 0))
    return np.asarray(img)
