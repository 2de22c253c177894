"""Burst input: frames from image files or a short clip, which frames to use, and whether they register.

Why these steps: the burst model separates the layers from how they move between frames, so it
needs frames of one scene, with some camera motion (parallax) but not so much that little of
the scene is shared or that the motion leaves the range it was trained on (the synthesis moves
the far plane 1-5.5 % of the frame side between the middle and an end frame). Everything here
is measured on grey thumbnails (long side 256 px) by global phase correlation: a translation
and a peak-to-sidelobe ratio (PSR) that says whether two frames show the same scene at all.

- Files (3-7): the middle one (by argument order) is the reference; every other frame must have
  its size, register with it (PSR) and overlap it (shift under a quarter of the frame);
  up to four neighbours are kept, spread in shift.
- A clip: decoded with PyAV (two passes: thumbnails of every frame, then the chosen frames at
  full resolution); consecutive thumbnails that do not register are a cut. The reference is the
  clip's middle frame; the neighbours are the frames, within the motion range, farthest apart
  in shift (farthest-point sampling): spread over the clip by motion, not by time.

A burst that cannot be used raises `BurstProblem` (one line, naming the file): the caller falls
back to the single-image student on the reference frame.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dereflect.errors import DereflectError, UsageError, first_line
from dereflect.images import LoadedImage, read_image

MIN_FRAMES, MAX_FRAMES = 3, 7
#: Neighbours of the reference the model sees (5-frame model: 4).
NEIGHBOURS = 4
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".3gp")
ANALYSIS_SIDE = 256
#: Two frames register (show one scene) when the correlation peak's peak-to-sidelobe ratio reaches
#: MIN_PSR or, after aligning them by the measured shift, the normalised cross-correlation of their
#: blurred overlap reaches MIN_NCC. Measured on 256-px thumbnails: unrelated photos PSR 5.6-9.3 and
#: NCC -0.6-0.3; consecutive frames of the 25 liu2020 clips PSR 8-334 with NCC 0.17-0.997 (the one
#: pair under both limits moves 15 % of the frame between frames 0 and 1 of Guo_et_al/00002).
MIN_PSR = 12.0
MIN_NCC = 0.5
#: A frame shifted more than this fraction of the frame's side shares too little of the scene.
MAX_OVERLAP_SHIFT = 0.25
#: Motion range for clip frames (fraction of the short side, from the reference): above the synthesis'
#: 5.5 % the flow nets are outside what they learned; frames up to this are used and pre-aligned.
MAX_CLIP_SHIFT = 0.12
#: Below this (fraction of the short side) the camera barely moved: the burst adds little.
MIN_PARALLAX = 0.004
MAX_CLIP_FRAMES = 900


class BurstProblem(DereflectError):
    """The frames cannot be used as a burst (sizes, no registration, a cut, too little overlap).
    `reference_index`: for a clip, the frame the single-image fallback should use."""

    def __init__(self, path: str | Path | None, problem: str, reference_index: int = 0) -> None:
        super().__init__(path, problem)
        self.reference_index = reference_index


@dataclass
class Burst:
    """Frames ready for the model, in time order; the reference is `frames[ref]`.

    shifts: per frame, (dx, dy) of its content relative to the reference, in full-resolution
    pixels; labels: what each frame is, for people ("b.jpg", "frame 12"); image: the reference
    file as read (metadata kept for the output) or None for a clip.
    """

    frames: list[np.ndarray]
    labels: list[str]
    shifts: list[tuple[float, float]]
    ref: int
    source: Path
    image: LoadedImage | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def reference(self) -> np.ndarray:
        return self.frames[self.ref]

    def describe(self) -> str:
        mid = self.ref
        parts = [
            f"{lab} ({dx:+.1f},{dy:+.1f} px)" if i != mid else f"{lab} (reference)"
            for i, (lab, (dx, dy)) in enumerate(zip(self.labels, self.shifts))
        ]
        return ", ".join(parts)


# ------------------------------------------------------------------------------ registration


def thumbnail(pixels: np.ndarray, side: int = ANALYSIS_SIDE) -> tuple[np.ndarray, float]:
    """Grey float32 thumbnail, long side `side` (never enlarged), and its scale (thumb px / full px)."""
    arr = pixels if pixels.dtype == np.uint8 else (pixels >> 8).astype(np.uint8)
    h, w = arr.shape[:2]
    scale = min(1.0, side / max(h, w))
    im = Image.fromarray(arr).convert("L")
    if scale < 1.0:
        im = im.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BOX)
    return np.asarray(im, dtype=np.float32), scale


def _window(h: int, w: int) -> np.ndarray:
    return np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)


def phase_shift(ref: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, psr): how far `other`'s content is moved from `ref`'s (other(p + d) ~ ref(p)),
    to a fraction of a pixel, and the correlation peak's peak-to-sidelobe ratio."""
    if ref.shape != other.shape:
        raise ValueError(f"thumbnails differ in size: {ref.shape} vs {other.shape}")
    win = _window(*ref.shape)
    fa = np.fft.rfft2((ref - ref.mean()) * win)
    fb = np.fft.rfft2((other - other.mean()) * win)
    cross = fb * np.conj(fa)
    cross /= np.abs(cross) + 1e-9
    corr = np.fft.irfft2(cross, s=ref.shape)
    h, w = corr.shape
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)
    peak = float(corr[py, px])

    def sub(c_minus: float, c0: float, c_plus: float) -> float:
        den = c_minus - 2 * c0 + c_plus
        return 0.0 if abs(den) < 1e-12 else 0.5 * (c_minus - c_plus) / den

    dy = py + sub(corr[(py - 1) % h, px], peak, corr[(py + 1) % h, px])
    dx = px + sub(corr[py, (px - 1) % w], peak, corr[py, (px + 1) % w])
    dy = dy - h if dy > h / 2 else dy
    dx = dx - w if dx > w / 2 else dx
    # Sidelobes: everything outside a small box around the peak.
    mask = np.ones_like(corr, dtype=bool)
    for yy in range(py - 5, py + 6):
        mask[yy % h, [(xx % w) for xx in range(px - 5, px + 6)]] = False
    side = corr[mask]
    psr = (peak - float(side.mean())) / (float(side.std()) + 1e-12)
    return float(dx), float(dy), float(psr)


def _blur(a: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Separable Gaussian blur with mirrored edges, in numpy (the slim install has no scipy)."""
    r = int(3 * sigma)
    taps = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    h, w = a.shape
    p = np.pad(a, r, mode="symmetric")
    rows = sum(k * p[:, i : i + w] for i, k in enumerate(taps))
    return sum(k * rows[i : i + h] for i, k in enumerate(taps)).astype(np.float32)


def aligned_ncc(ref: np.ndarray, other: np.ndarray, dx: float, dy: float) -> float:
    """Normalised cross-correlation of the overlap of two blurred thumbnails once `other` is moved
    back by (dx, dy) (rounded): near 1 for one scene, near 0 for two (a cut)."""
    a, b = _blur(ref), _blur(other)
    ix, iy = int(round(dx)), int(round(dy))
    h, w = a.shape
    ys, xs = slice(max(0, -iy), min(h, h - iy)), slice(max(0, -ix), min(w, w - ix))
    if ys.stop - ys.start < 8 or xs.stop - xs.start < 8:
        return 0.0
    va = a[ys, xs].ravel()
    vb = b[ys.start + iy : ys.stop + iy, xs.start + ix : xs.stop + ix].ravel()
    va, vb = va - va.mean(), vb - vb.mean()
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb) + 1e-9))


def register(ref: np.ndarray, other: np.ndarray) -> tuple[float, float, str | None]:
    """(dx, dy, problem): the shift of `other` from `ref` in thumbnail pixels, and None when the
    two register, else why not (for a message)."""
    dx, dy, psr = phase_shift(ref, other)
    if psr >= MIN_PSR:
        return dx, dy, None
    ncc = aligned_ncc(ref, other, dx, dy)
    if ncc >= MIN_NCC:
        return dx, dy, None
    return dx, dy, f"PSR {psr:.1f} < {MIN_PSR:g} and aligned NCC {ncc:.2f} < {MIN_NCC:g}"


# ------------------------------------------------------------------------------ selection


def spread_picks(shifts: np.ndarray, candidates: list[int], ref: int, count: int) -> list[int]:
    """Up to `count` of `candidates` farthest apart in shift from each other and from the reference
    (greedy farthest-point sampling in the 2-D shift plane); ties go to the earlier frame."""
    chosen = [ref]
    left = list(candidates)
    while left and len(chosen) < count + 1:
        dist = [min(float(np.hypot(*(shifts[c] - shifts[k]))) for k in chosen) for c in left]
        best = int(np.argmax(dist))
        chosen.append(left.pop(best))
    return sorted(chosen[1:])


def arrange(ref: int, neighbours: list[int]) -> tuple[list[int], int]:
    """The chosen frames in time order, and where the reference is among them."""
    order = sorted({ref, *neighbours})
    return order, order.index(ref)


# ------------------------------------------------------------------------------ files


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def from_files(paths: list[Path]) -> Burst:
    """3-7 image files of one scene -> Burst (reference: the middle argument). BurstProblem when
    they cannot be registered; DereflectError when a file cannot be read at all."""
    if not MIN_FRAMES <= len(paths) <= MAX_FRAMES:
        raise UsageError(None, f"--burst takes {MIN_FRAMES}-{MAX_FRAMES} frames or one video clip, got {len(paths)} file(s)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an animated file's "first frame only" is not news here
        images = [read_image(p) for p in paths]
    ref = len(paths) // 2
    burst = from_arrays([img.pixels for img in images], [Path(p) for p in paths], ref)
    burst.image = images[ref]
    return burst


def from_arrays(pixels: list[np.ndarray], names: list[Path], ref: int) -> Burst:
    """Frames already in memory (HWC, one scene) -> Burst with `pixels[ref]` as the reference:
    the checks and the choice of `from_files`, without the reading (also used by tools/burst_eval.py)."""
    h, w = pixels[ref].shape[:2]
    for p, img in zip(names, pixels):
        if img.shape[:2] != (h, w):
            ih, iw = img.shape[:2]
            raise BurstProblem(p, f"is {iw}x{ih} px, the reference {names[ref].name} is {w}x{h}: burst frames must have one size")
    thumbs = [thumbnail(img) for img in pixels]
    scale = thumbs[ref][1]
    shifts = np.zeros((len(pixels), 2))
    for i, (p, (t, _)) in enumerate(zip(names, thumbs)):
        if i == ref:
            continue
        dx, dy, problem = register(thumbs[ref][0], t)
        if problem is not None:
            raise BurstProblem(p, f"does not register with the reference {names[ref].name} ({problem}: another scene, or a cut)")
        shift_frac = max(abs(dx) / t.shape[1], abs(dy) / t.shape[0])
        if shift_frac > MAX_OVERLAP_SHIFT:
            raise BurstProblem(
                p,
                f"too little overlap with the reference {names[ref].name} (moved {dx / scale:+.0f},{dy / scale:+.0f} px, over {MAX_OVERLAP_SHIFT:.0%} of the frame)",
            )
        shifts[i] = (dx / scale, dy / scale)
    others = [i for i in range(len(pixels)) if i != ref]
    order, pos = arrange(ref, spread_picks(shifts, others, ref, NEIGHBOURS))
    burst = Burst([pixels[i] for i in order], [names[i].name for i in order], [tuple(shifts[i]) for i in order], pos, names[ref])
    if len(order) < len(pixels):
        burst.notes.append(f"kept {len(order)} of {len(pixels)} frames (the most spread in shift)")
    _note_parallax(burst, shifts, min(h, w))
    return burst


def _note_parallax(burst: Burst, shifts: np.ndarray, short_side: int) -> None:
    biggest = float(np.hypot(shifts[:, 0], shifts[:, 1]).max()) if len(shifts) else 0.0
    if biggest < MIN_PARALLAX * short_side:
        burst.notes.append(f"the camera barely moved (largest shift {biggest:.1f} px): the burst has little parallax to work with")


# ------------------------------------------------------------------------------ clips


def _av():
    try:
        import av
    except ImportError:
        raise DereflectError(None, "reading a video clip needs PyAV: pip install 'dereflect[video]'") from None
    return av


def decode(path: Path, keep: set[int] | None = None, limit: int = MAX_CLIP_FRAMES) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB uint8 frame) of the clip's first video stream, in order; only the indices in
    `keep` when given. One DereflectError for a file PyAV cannot open or decode."""
    av = _av()
    if not path.is_file():
        raise DereflectError(path, "no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DereflectError(path, f"cannot open this video ({first_line(exc)})") from None
    with container:
        if not container.streams.video:
            raise DereflectError(path, "no video stream in this file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i >= limit:
                    break
                if keep is None or i in keep:
                    yield i, frame.to_ndarray(format="rgb24")
                if keep is not None and i >= max(keep):
                    break
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise DereflectError(path, f"the video is corrupt or truncated ({first_line(exc)})") from None


def from_clip(path: Path, count: int = NEIGHBOURS) -> Burst:
    """A short clip -> Burst: the middle frame and up to `count` neighbours spread in motion."""
    thumbs: list[np.ndarray] = []
    scale, size = 1.0, None
    for _, rgb in decode(path):
        t, scale = thumbnail(rgb)
        size = rgb.shape[:2]
        thumbs.append(t)
    if not thumbs:
        raise DereflectError(path, "no decodable video frames")
    if len(thumbs) < MIN_FRAMES:
        raise BurstProblem(path, f"only {len(thumbs)} frame(s) in the clip; a burst needs at least {MIN_FRAMES}", len(thumbs) // 2)
    steps = np.zeros((len(thumbs), 2))
    for i in range(1, len(thumbs)):
        dx, dy, problem = register(thumbs[i - 1], thumbs[i])
        if problem is not None:
            raise BurstProblem(
                path,
                f"a cut between frames {i - 1} and {i} (they do not register: {problem}); a burst must be one continuous shot",
                len(thumbs) // 2,
            )
        steps[i] = (dx, dy)
    ref = len(thumbs) // 2
    shifts = (np.cumsum(steps, axis=0) - np.cumsum(steps, axis=0)[ref]) / scale  # full-resolution px from the reference
    short = min(size)
    reach = np.hypot(shifts[:, 0], shifts[:, 1])
    candidates = [i for i in range(len(thumbs)) if i != ref and reach[i] <= MAX_CLIP_SHIFT * short]
    if len(candidates) < MIN_FRAMES - 1:
        raise BurstProblem(
            path,
            f"too much motion: only {len(candidates)} frame(s) within {MAX_CLIP_SHIFT:.0%} of the frame of the middle one (frame {ref})",
            ref,
        )
    order, pos = arrange(ref, spread_picks(shifts, candidates, ref, count))
    frames = dict(decode(path, keep=set(order)))
    missing = [i for i in order if i not in frames]
    if missing:
        raise DereflectError(path, f"frame {missing[0]} decoded the first time but not the second")
    burst = Burst([frames[i] for i in order], [f"frame {i}" for i in order], [tuple(shifts[i]) for i in order], pos, path)
    burst.notes.append(f"picked {len(order)} of {len(thumbs)} frames")
    _note_parallax(burst, shifts[order], short)
    return burst


def load_burst(paths: list[Path]) -> Burst:
    """What `--burst` was given (frames, or one clip) -> Burst; BurstProblem when unusable."""
    videos = [p for p in paths if is_video(p)]
    if videos:
        if len(paths) != 1:
            raise UsageError(None, f"--burst takes one video clip on its own or {MIN_FRAMES}-{MAX_FRAMES} image files, not both")
        return from_clip(paths[0])
    return from_files(paths)
