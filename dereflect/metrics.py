"""PSNR, SSIM, LMSE and NCC as single-image reflection removal papers report them.

The protocol (docs/DESIGN.md, "Metrics") is the one ERRNet / IBCLN / Zheng et al. evaluate with, so our
numbers compare with the literature: images as float in [0, 255]; PSNR and SSIM per RGB channel,
then averaged; SSIM exactly as scikit-image's `structural_similarity` defaults (7x7 uniform window,
K1=0.01, K2=0.03, data_range=255, sample covariance, a 3-pixel border left out); LMSE over 20x20
windows at stride 10 with a per-window, per-channel scale of the estimate; NCC over all pixels and
channels at once.

Everything is vectorised: SSIM uses box sums over the "valid" windows only (the border scikit-image
crops is exactly where its reflect padding would matter), LMSE uses 10x10 block sums (a 20x20 window
at stride 10 is four blocks). A 3000x4000 RGB pair scores in well under a second per metric
(speed/bench_metrics.py). `ssim_torch` is the same SSIM as a differentiable loss term.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: scoring images must not pay for it
    import torch

DATA_RANGE = 255.0
SSIM_WIN = 7  # _window7_sum is written for this size
SSIM_K1 = 0.01
SSIM_K2 = 0.03
LMSE_WINDOW = 20
LMSE_STRIDE = 10
LMSE_MIN_ENERGY = 1e-5
BAND_ELEMS = 1 << 19  # elements per band of rows: ~4 MB of float64
SSIM_MIN_BAND_ROWS = 24

ALIGNED_MAX_SHIFT = 1.0  # px: a pair whose ground truth is shifted more than this is "misaligned"

__all__ = ["psnr", "ssim", "ssim_per_channel", "lmse", "ncc", "score", "gt_shift", "ssim_torch", "DATA_RANGE", "ALIGNED_MAX_SHIFT"]


def _as_pair(gt: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as HxWxC arrays in [0, 255] (dtype kept); grey HxW becomes HxWx1. Shapes must match."""
    gt_arr = np.asarray(gt)
    est_arr = np.asarray(est)
    if gt_arr.shape != est_arr.shape:
        raise ValueError(f"ground truth has shape {gt_arr.shape} but estimate has shape {est_arr.shape}")
    if gt_arr.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {gt_arr.shape}")
    if gt_arr.ndim == 2:
        gt_arr, est_arr = gt_arr[..., None], est_arr[..., None]
    return gt_arr, est_arr


def _row_bands(n_rows: int, row_elems: int, min_rows: int = 1) -> list[tuple[int, int]]:
    """Split n_rows into bands of about BAND_ELEMS elements each.

    Why bands: at 4K a float64 image is 288 MB. Whole-image temporaries cost more in page
    faults and memory traffic than the arithmetic (this VM's faults are slow, and glibc hands
    freed big blocks back to the kernel). Bands of a few MB computed into buffers allocated
    once per call stay in cache; that is what makes a 3000x4000 pair score in a fraction of a
    second.
    """
    step = max(min_rows, BAND_ELEMS // max(1, row_elems))
    return [(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def _as_rows(a: np.ndarray) -> np.ndarray:
    """HxWxC -> contiguous H x (W*C) view (copies only a non-contiguous input)."""
    h, w, c = a.shape
    return np.ascontiguousarray(a).reshape(h, w * c)


def psnr(gt: np.ndarray, est: np.ndarray) -> float:
    """PSNR in dB (data range 255) per channel, averaged; inf when a channel matches exactly."""
    g, e = _as_pair(gt, est)
    h, w, c = g.shape
    g2, e2 = _as_rows(g), _as_rows(e)
    bands = _row_bands(h, w * c)
    diff = np.empty((bands[0][1] - bands[0][0], w * c), dtype=np.float64)
    col_sq = np.zeros(w * c, dtype=np.float64)
    for r0, r1 in bands:
        d = diff[: r1 - r0]
        np.subtract(g2[r0:r1], e2[r0:r1], out=d, dtype=np.float64)
        d *= d
        col_sq += d.sum(axis=0)
    mse = col_sq.reshape(w, c).sum(axis=0) / (h * w)
    with np.errstate(divide="ignore"):
        per_channel = 10.0 * np.log10(DATA_RANGE**2 / mse)
    return float(np.mean(per_channel))


def _window7_sum(a: np.ndarray, axis: int, unit: int, out: np.ndarray, t2: np.ndarray, t4: np.ndarray) -> None:
    """out = sum of every 7 consecutive entries along axis of 2-D a ("valid" positions only).

    `unit` is the step between neighbours along that axis (C along the pixel axis of an
    H x (W*C) array). Four shifted additions into caller-owned buffers t2, t4 (at least
    n-1 and n-3 entries long along axis): about twice as fast as scipy's uniform_filter1d, and
    equal to its reflect-padded output with the 3-entry border cropped.
    """
    n = a.shape[axis] // unit

    def part(x: np.ndarray, start: int, stop: int) -> np.ndarray:
        return x[start * unit : stop * unit] if axis == 0 else x[:, start * unit : stop * unit]

    s2 = part(t2, 0, n - 1)
    np.add(part(a, 0, n - 1), part(a, 1, n), out=s2)  # a[i] + a[i+1]
    s4 = part(t4, 0, n - 3)
    np.add(part(s2, 0, n - 3), part(s2, 2, n - 1), out=s4)  # a[i..i+3]
    np.add(part(s4, 0, n - 6), part(s2, 4, n - 2), out=out)  # + a[i+4] + a[i+5]
    out += part(a, 6, n)  # + a[i+6]


class _SsimWorkspace:
    """Buffers for one SSIM call, sized for its largest band and reused by every band."""

    def __init__(self, rows_out: int, width: int, channels: int, work: type) -> None:
        rows_in = rows_out + SSIM_WIN - 1
        row = width * channels
        row_out = (width - SSIM_WIN + 1) * channels
        self.channels = channels
        self.g = np.empty((rows_in, row), work)
        self.e = np.empty((rows_in, row), work)
        self.prod = np.empty((rows_in, row), work)
        self.t2v = np.empty((rows_in - 1, row), work)
        self.t4v = np.empty((rows_in - 3, row), work)
        self.vert = np.empty((rows_out, row), work)
        self.t2h = np.empty((rows_out, row - channels), work)
        self.t4h = np.empty((rows_out, row - 3 * channels), work)
        self.sx, self.sy, self.sxy, self.sv, self.p = (np.empty((rows_out, row_out), work) for _ in range(5))
        self.a1, self.a2, self.b1, self.b2 = (np.empty((rows_out, row_out), np.float64) for _ in range(4))

    def box_sum(self, a: np.ndarray, out: np.ndarray) -> None:
        """out = sum over every 7x7 window fully inside a (rows x (W*C) band)."""
        rows = a.shape[0] - SSIM_WIN + 1
        vert = self.vert[:rows]
        _window7_sum(a, 0, 1, vert, self.t2v, self.t4v)
        _window7_sum(vert, 1, self.channels, out, self.t2h[:rows], self.t4h[:rows])


def _ssim_band_sums(ws: _SsimWorkspace, g_band: np.ndarray, e_band: np.ndarray) -> np.ndarray:
    """Per-channel sum of the SSIM map over the valid windows of one band (H x (W*C) rows).

    The windows kept are the ones scikit-image averages: it filters with reflect padding,
    then crops 3 pixels on each side, so the padding never reaches them. Integer work
    (int32, from uint8 images) keeps every window sum exact: 49 * 255^2 * 2 is far below
    2^31. scikit-image's terms are rewritten on window sums S over n = 49 pixels so the n^2
    cancels: SSIM = (2 Sx Sy + C1 n^2)(2 cov (n Sxy - Sx Sy) + C2 n^2) /
    ((Sx^2 + Sy^2 + C1 n^2)(cov (n (Sxx + Syy) - Sx^2 - Sy^2) + C2 n^2)), cov = n / (n - 1).
    """
    n = SSIM_WIN**2
    cov_norm = n / (n - 1.0)  # sample covariance
    c1n = (SSIM_K1 * DATA_RANGE) ** 2 * n * n
    c2n = (SSIM_K2 * DATA_RANGE) ** 2 * n * n
    rows_in = g_band.shape[0]
    rows = rows_in - SSIM_WIN + 1
    g, e, prod = ws.g[:rows_in], ws.e[:rows_in], ws.prod[:rows_in]
    sx, sy, sxy, sv, p = ws.sx[:rows], ws.sy[:rows], ws.sxy[:rows], ws.sv[:rows], ws.p[:rows]
    a1, a2, b1, b2 = ws.a1[:rows], ws.a2[:rows], ws.b1[:rows], ws.b2[:rows]
    np.copyto(g, g_band, casting="unsafe")
    np.copyto(e, e_band, casting="unsafe")
    ws.box_sum(g, sx)
    ws.box_sum(e, sy)
    np.multiply(g, e, out=prod)
    ws.box_sum(prod, sxy)
    g *= g
    e *= e
    g += e
    ws.box_sum(g, sv)  # Sxx + Syy
    np.multiply(sx, sy, out=p)
    sx *= sx
    sy *= sy
    sxy *= n
    sxy -= p  # n Sxy - Sx Sy
    sv *= n
    sv -= sx
    sv -= sy  # n (Sxx + Syy) - Sx^2 - Sy^2
    np.multiply(p, 2.0, out=a1)
    a1 += c1n  # A1 n^2
    np.multiply(sxy, 2.0 * cov_norm, out=a2)
    a2 += c2n  # A2 n^2
    np.add(sx, c1n, out=b1)
    b1 += sy  # B1 n^2
    np.multiply(sv, cov_norm, out=b2)
    b2 += c2n  # B2 n^2
    a1 *= a2
    b1 *= b2
    a1 /= b1  # the SSIM map, rows x (W'*C)
    # Column sums first (contiguous), then fold the interleaved channels: ~15x faster than
    # reducing a pixels x C view along its long axis.
    return a1.sum(axis=0).reshape(-1, ws.channels).sum(axis=0)


def ssim_per_channel(gt: np.ndarray, est: np.ndarray) -> np.ndarray:
    """Mean SSIM of each channel (scikit-image defaults, data range 255), shape (C,)."""
    g, e = _as_pair(gt, est)
    h, w, c = g.shape
    if min(h, w) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {h}x{w}")
    exact = g.dtype == np.uint8 and e.dtype == np.uint8
    pad = SSIM_WIN - 1
    out_h = h - pad
    g2, e2 = _as_rows(g), _as_rows(e)
    bands = _row_bands(out_h, w * c, min_rows=SSIM_MIN_BAND_ROWS)
    ws = _SsimWorkspace(bands[0][1] - bands[0][0], w, c, np.int32 if exact else np.float64)
    total = np.zeros(c, dtype=np.float64)
    # Each band of output rows reads its rows plus the window's 6 extra rows of input.
    for r0, r1 in bands:
        total += _ssim_band_sums(ws, g2[r0 : r1 + pad], e2[r0 : r1 + pad])
    # SSIM <= 1 by construction (equality for identical windows); rounding can add an ulp.
    return np.minimum(total / (out_h * (w - pad)), 1.0)


def ssim(gt: np.ndarray, est: np.ndarray) -> float:
    """Mean SSIM per channel, averaged (scikit-image defaults, data range 255)."""
    return float(np.mean(ssim_per_channel(gt, est)))


def lmse(gt: np.ndarray, est: np.ndarray) -> float:
    """Local MSE with per-window scaling of the estimate (Grosse et al.), as SIRR papers report it.

    Per channel and per 20x20 window (stride 10) the estimate is scaled by
    a = sum(gt*est) / sum(est^2) (0 when sum(est^2) <= 1e-5); the squared errors of all windows and
    channels are summed and divided by the sum of gt^2 over the same windows. 0 is perfect, 1 is
    what an all-zero estimate gets; invariant to a global scale of the estimate. Images smaller
    than one window raise ValueError.
    """
    g, e = _as_pair(gt, est)
    h, w, c = g.shape
    if min(h, w) < LMSE_WINDOW:
        raise ValueError(f"LMSE needs images of at least {LMSE_WINDOW}x{LMSE_WINDOW} pixels, got {h}x{w}")
    assert LMSE_WINDOW == 2 * LMSE_STRIDE, "the block trick below needs window = 2 * stride"
    block = LMSE_STRIDE
    # Windows start at 0, 10, ... up to size-20; window k is made of blocks k and k+1 (each axis).
    blocks_h = (h - LMSE_WINDOW) // block + 2
    blocks_w = (w - LMSE_WINDOW) // block + 2
    sums = np.empty((3, blocks_h, blocks_w, c), dtype=np.float64)  # gg, ge, ee per 10x10 block
    bands = _row_bands(blocks_h, block * w * c)
    shape = ((bands[0][1] - bands[0][0]) * block, blocks_w * block, c)
    gbuf, ebuf, prod = (np.empty(shape, np.float64) for _ in range(3))
    for b0, b1 in bands:
        rows = (b1 - b0) * block
        gb, eb, pb = gbuf[:rows], ebuf[:rows], prod[:rows]
        np.copyto(gb, g[b0 * block : b1 * block, : blocks_w * block])
        np.copyto(eb, e[b0 * block : b1 * block, : blocks_w * block])
        for k, (x, y) in enumerate(((gb, gb), (gb, eb), (eb, eb))):
            np.multiply(x, y, out=pb)
            # Rows within each block first (contiguous adds), then the 10 columns of the smaller rest.
            rows_summed = pb.reshape(b1 - b0, block, blocks_w * block * c).sum(axis=1)
            sums[k, b0:b1] = rows_summed.reshape(b1 - b0, blocks_w, block, c).sum(axis=2)
    win = sums[:, :-1, :-1] + sums[:, 1:, :-1] + sums[:, :-1, 1:] + sums[:, 1:, 1:]
    gg, ge, ee = win
    alpha = np.divide(ge, ee, out=np.zeros_like(ge), where=ee > LMSE_MIN_ENERGY)
    # sum over the window of (g - a*e)^2, expanded: gg - 2a*ge + a^2*ee.
    ssq = gg - 2.0 * alpha * ge + alpha * alpha * ee
    # A window's squared error is >= 0; the expanded form can cancel to -1e-16 when est ~ gt.
    np.maximum(ssq, 0.0, out=ssq)
    total = float(gg.sum())
    if total == 0.0:  # black ground truth: only a perfect estimate scores 0
        return 0.0 if float(ssq.sum()) == 0.0 else math.inf
    return float(ssq.sum() / total)


def ncc(gt: np.ndarray, est: np.ndarray) -> float:
    """Normalised cross-correlation over all pixels and channels; nan when either image is flat."""
    g, e = _as_pair(gt, est)
    h, w, c = g.shape
    g2, e2 = _as_rows(g), _as_rows(e)
    n = g2.size
    mean_g = float(np.sum(g2, dtype=np.float64)) / n
    mean_e = float(np.sum(e2, dtype=np.float64)) / n
    bands = _row_bands(h, w * c)
    gbuf, ebuf = (np.empty((bands[0][1] - bands[0][0]) * w * c, np.float64) for _ in range(2))
    sgg = sge = see = 0.0
    for r0, r1 in bands:
        gc, ec = gbuf[: (r1 - r0) * w * c], ebuf[: (r1 - r0) * w * c]
        np.subtract(g2[r0:r1].ravel(), mean_g, out=gc, dtype=np.float64)
        np.subtract(e2[r0:r1].ravel(), mean_e, out=ec, dtype=np.float64)
        # einsum, not BLAS dot: OpenBLAS threads spin and fight over the two cores.
        sgg += float(np.einsum("i,i->", gc, gc))
        sge += float(np.einsum("i,i->", gc, ec))
        see += float(np.einsum("i,i->", ec, ec))
    denom = math.sqrt(sgg * see)
    if denom == 0.0:
        return math.nan
    return sge / denom


def score(gt: np.ndarray, est: np.ndarray) -> dict[str, float]:
    """All four metrics of one pair, keyed psnr / ssim / lmse / ncc."""
    return {"psnr": psnr(gt, est), "ssim": ssim(gt, est), "lmse": lmse(gt, est), "ncc": ncc(gt, est)}


def gt_shift(gt: np.ndarray, photo: np.ndarray) -> float:
    """How far (px, to 1/4 px) the ground truth is translated against the photo it belongs to.

    Why: real pairs are shot twice, through the glass and with it removed; a moved camera or the
    glass' refraction shifts the two. On a misaligned pair SSIM and LMSE score content that does
    not correspond, and they reward blur and haze (a blurred or brightened photo "beats" the
    photo), so a mean over such pairs can rank methods backwards. Global phase correlation of
    the grey images (scikit-image) finds the translation; parallax is not a translation, but it
    shows up as a shift of several pixels too. Compare with ALIGNED_MAX_SHIFT.
    """
    from skimage.registration import phase_cross_correlation

    g, p = _as_pair(gt, photo)
    grey_g, grey_p = g.astype(np.float64).mean(axis=2), p.astype(np.float64).mean(axis=2)
    shift, _, _ = phase_cross_correlation(grey_g, grey_p, upsample_factor=4, normalization=None)
    return float(np.hypot(*shift))


def ssim_torch(x: torch.Tensor, y: torch.Tensor, reduction: Literal["mean", "none", "sum"] = "mean") -> torch.Tensor:
    """Differentiable SSIM of NCHW images in [0, 1]: the same number `ssim` gives on x*255, y*255.

    Same 7x7 uniform window over valid positions, sample covariance, K1/K2 and per-channel mean.
    reduction="none" returns one value per image (N,), "mean"/"sum" reduce over the batch.
    Both inputs are shifted by one per-channel constant first: SSIM's variances do not change,
    and float32 loses far less to cancellation in E[x^2] - E[x]^2.
    """
    import torch.nn.functional as F

    if x.shape != y.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but y has shape {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"expected NCHW tensors, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {tuple(x.shape[-2:])}")
    np_ = SSIM_WIN**2
    cov_norm = np_ / (np_ - 1.0)
    c1 = SSIM_K1**2
    c2 = SSIM_K2**2
    shift = (0.5 * (x.mean(dim=(2, 3), keepdim=True) + y.mean(dim=(2, 3), keepdim=True))).detach()
    xs = x - shift
    ys = y - shift

    def box(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, SSIM_WIN, stride=1)

    mx, my = box(xs), box(ys)
    vx = cov_norm * (box(xs * xs) - mx * mx)
    vy = cov_norm * (box(ys * ys) - my * my)
    vxy = cov_norm * (box(xs * ys) - mx * my)
    ux, uy = mx + shift, my + shift
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    per_image = s_map.mean(dim=(2, 3)).mean(dim=1)
    if reduction == "none":
        return per_image
    if reduction == "sum":
        return per_image.sum()
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
