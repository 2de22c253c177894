"""Any resolution through a fixed-stride network: pad, tile, blend, with bounded memory.

The student needs H and W to be multiples of 8. Conceptually the image is reflect-padded at the
bottom and right up to that multiple (the "canvas"), run, and cropped back. Small images are one
tile: exactly that. Big ones (over `max_pixels`, or when a tile size is asked for) are cut into
overlapping tiles of the canvas, as few as fit and spread evenly, whose corners sit on multiples
of 8, so every tile sees the same pixel phase as the whole-image run would, and the tiles are blended with raised-cosine ramps
over the middle of the overlap (complementary ramps sum to one, so there is no seam and no
brightness dip; the outer quarter of each tile's overlap, which saw padding, is dropped).

A fixed-shape artifact (`dereflect export --fixed-shape 512x512`, for phone NPUs; Core ML
enumerated shapes) takes one (H, W) only: every tile is exactly that size, spaced at the tile minus
the overlap, the last one flush with the image's end (more overlap, but real pixels instead of
padding), and an image smaller than the tile, or the few canvas rows past the image, is padded up
to it and cropped back after the run.

Memory stays bounded for 24-megapixel photos because nothing image-sized is ever float: tiles
are converted one at a time from the caller's uint8/uint16 array, and a row of tiles is blended
into a float32 band of one tile's height. When a row of tiles is done, the rows no later tile
touches are normalised, converted and written to the preallocated output; the rest of the band
moves up. Peak extra memory is one band (tile x width x 4 channels of float32) plus two tiles (output, weighted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from dereflect.images import from_float, from_float_chw_into, to_float

Infer = Callable[[np.ndarray], np.ndarray]  # (1,3,h,w) float32 [0,1] -> same shape
Stream = Callable[[Iterable[np.ndarray]], Iterator[np.ndarray]]  # many tiles -> their results, in order

#: Images up to this many pixels run in one piece (the canvas is one tile).
DEFAULT_MAX_PIXELS = 2048 * 2048
#: Tile side used when an image is over the budget and no tile size was given.
DEFAULT_TILE = 1024
#: Pixels two neighbouring tiles share (rounded up to the network multiple).
DEFAULT_OVERLAP = 128


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles go. `ys`/`xs` are tile origins on the canvas (multiples of the network
    multiple); every tile is `tile_h` x `tile_w` canvas pixels; `overlap` is the ramp length."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    overlap: int

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def tiled(self) -> bool:
        return self.count > 1


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _axis(canvas: int, limit: int, overlap: int, multiple: int) -> tuple[int, tuple[int, ...]]:
    """(tile length, tile origins) along one axis: the fewest tiles of at most `limit` that cover
    `canvas` with at least `overlap` shared, all the same length and spread evenly (so the last
    tile is not a mostly-overlapping leftover), origins on multiples of `multiple`."""
    if limit >= canvas:
        return canvas, (0,)
    count = max(2, -(-(canvas - overlap) // (limit - overlap)))
    while count < canvas // multiple:
        length = _round_up(-(-(canvas + (count - 1) * overlap) // count), multiple)
        while length <= min(limit, canvas):
            span = canvas - length
            origins = tuple(i * span // (count - 1) // multiple * multiple for i in range(count - 1)) + (span,)
            if all(b - a <= length - overlap for a, b in zip(origins, origins[1:])):
                return length, origins
            length += multiple  # rounding origins to the multiple ate into an overlap: a bit longer
        count += 1
    return multiple, tuple(range(0, canvas, multiple))  # tiles of one block: only for degenerate limits


def plan_tiles(
    height: int,
    width: int,
    multiple: int = 8,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    fixed: tuple[int, int] | None = None,
    min_side: int = 0,
) -> TilePlan:
    """Choose the tile grid for an image of height x width.

    tile: the largest tile side (rounded down to the multiple); None = one tile unless the image
    is over max_pixels (then DEFAULT_TILE, or sqrt(max_pixels) if smaller) or a side is over
    max_side (what the backend can take). Tiles are spread evenly: the fewest that fit, all of
    one size (often a little under `tile`), so little work is spent on overlap. fixed: a backend that
    only runs one (h, w) (a `--fixed-shape` ONNX/ORT artifact, Core ML enumerated shapes): every
    tile is that size, `tile` and `max_pixels` are ignored, and smaller canvases are padded up to
    it. min_side: the smallest input the backend takes (a TensorRT profile): smaller canvases are
    padded up to it.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    canvas_h, canvas_w = _round_up(height, multiple), _round_up(width, multiple)
    if min_side:
        canvas_h, canvas_w = max(canvas_h, _round_up(min_side, multiple)), max(canvas_w, _round_up(min_side, multiple))
    if fixed is not None:
        th, tw = fixed
        canvas_h, canvas_w = max(canvas_h, th), max(canvas_w, tw)
    else:
        limit = tile
        if limit is None and height * width > max_pixels:
            limit = min(DEFAULT_TILE, math.isqrt(max_pixels))  # a tile never exceeds the budget either
        if max_side is not None and (limit is None or limit > max_side) and max(canvas_h, canvas_w) > max_side:
            limit = max_side
        if limit is None:
            return TilePlan(height, width, canvas_h, canvas_w, (0,), (0,), 0)
        side = max(multiple, limit - limit % multiple)
        th, tw = min(side, canvas_h), min(side, canvas_w)
    ov = _round_up(max(overlap, 0), multiple) if overlap > 0 else 0
    ov = min(ov, (min(th, tw) // 2) // multiple * multiple)  # a stride of at least half a tile
    if fixed is not None:
        stride_h, stride_w = max(th - ov, multiple), max(tw - ov, multiple)
        return TilePlan(height, width, th, tw, _fixed_origins(canvas_h, th, stride_h), _fixed_origins(canvas_w, tw, stride_w), ov)
    th, ys = _axis(canvas_h, th, ov, multiple)
    tw, xs = _axis(canvas_w, tw, ov, multiple)
    return TilePlan(height, width, th, tw, ys, xs, ov if len(ys) * len(xs) > 1 else 0)


def _fixed_origins(canvas: int, tile: int, stride: int) -> tuple[int, ...]:
    """Origins for a backend that runs one tile size only: regular stride, last tile flush."""
    if tile >= canvas:
        return (0,)
    return tuple(range(0, canvas - tile, stride)) + (canvas - tile,)


def ramp(length: int) -> np.ndarray:
    """Blend ramp over an overlap of `length` samples: 0 on the first quarter (the tile's edge,
    where the network saw padding instead of the neighbourhood), a raised cosine over the middle
    half, 1 on the last quarter. Complementary: ramp + ramp[::-1] == 1, so two tiles that share
    the overlap always sum to one and the seam sits where both are furthest from their edges."""
    margin = length // 4
    core = length - 2 * margin
    d = np.arange(core, dtype=np.float64)
    rise = 0.5 - 0.5 * np.cos(np.pi * (d + 0.5) / core)
    return np.concatenate([np.zeros(margin), rise, np.ones(margin)]).astype(np.float32)


def _weights_1d(size: int, start: int, canvas: int, overlap: int) -> np.ndarray:
    """Blend weights along one axis: ramps only on sides that another tile shares."""
    w = np.ones(size, np.float32)
    if overlap:
        r = ramp(overlap)
        if start > 0:
            w[:overlap] = r
        if start + size < canvas:
            w[size - overlap :] = r[::-1]
    return w


def _pad_to(tile: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad an HWC crop at the bottom/right to h x w: reflect, or edge-repeat when the crop is too
    small to reflect (the same rule as models.blocks.pad_to_multiple, which training uses)."""
    ph, pw = h - tile.shape[0], w - tile.shape[1]
    if not (ph or pw):
        return tile
    mode = "reflect" if min(tile.shape[:2]) > max(ph, pw) else "edge"
    return np.pad(tile, ((0, ph), (0, pw), (0, 0)), mode=mode)


def network_input(crop: np.ndarray, h: int, w: int) -> np.ndarray:
    """What a backend's infer gets for an HWC crop: float32 NCHW in [0,1], padded (bottom/right) to h x w."""
    return np.ascontiguousarray(_pad_to(to_float(crop), h, w).transpose(2, 0, 1)[None])


def _checked(results: Iterator[np.ndarray], shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """The backend's results, each checked against the shape of the tiles it was given."""
    for result in results:
        result = np.asarray(result)
        if result.shape != shape:
            raise ValueError(f"backend returned shape {result.shape} for input {shape}")
        yield result


def run_tiled(
    infer: Infer,
    image: np.ndarray,
    plan: TilePlan,
    on_tile: Callable[[], None] | None = None,
    stream: Stream | None = None,
) -> np.ndarray:
    """Run `infer` over `image` (HxWx3 uint8, uint16 or float) tile by tile; same shape and dtype out.

    Tiles are read from the caller's array and padded on the fly, so no float copy of the whole
    image is made; output rows are finished band by band (see the module docstring). `stream`
    (a backend's `infer_stream`) runs the tiles instead of `infer` one by one: it may have several
    in flight while the next is cut and the finished ones are blended; results come back in order.
    """
    h, w = image.shape[:2]
    out_dtype = image.dtype if image.dtype in (np.uint8, np.uint16) else np.dtype(np.float32)
    th, tw = plan.tile_h, plan.tile_w
    origins = [(y, x) for y in plan.ys for x in plan.xs]
    shape = (1, 3, th, tw)
    tiles = (network_input(image[y : y + th, x : x + tw], th, tw) for y, x in origins)
    results = _checked(stream(tiles) if stream is not None else map(infer, tiles), shape)
    if plan.count == 1:  # one piece: no accumulator, no weights
        result = next(results)
        if on_tile is not None:
            on_tile()
        return np.ascontiguousarray(from_float(result[0, :, :h, :w].transpose(1, 2, 0), out_dtype))
    out = np.empty((h, w, 3), out_dtype)
    canvas_h = max(plan.ys) + th
    canvas_w = max(plan.xs) + tw
    # The band is channels-first, like the network's output: a tile is weighted into a scratch
    # buffer and added without a transpose or temporaries (12 MP, 20 tiles: 0.3 s less CPU here
    # than weighting an HWC band); it is transposed once per pixel, when its rows are written out.
    band = np.zeros((3, th, w), np.float32)
    band_w = np.zeros((th, w), np.float32)
    scratch = np.empty((3, th, tw), np.float32)
    wx = [_weights_1d(tw, x, canvas_w, plan.overlap) for x in plan.xs]
    for k, y in enumerate(plan.ys):
        wy = _weights_1d(th, y, canvas_h, plan.overlap)
        rows = min(th, h - y)  # canvas rows below the image are padding: never kept
        for x, wxx in zip(plan.xs, wx):
            cols = min(tw, w - x)
            result = next(results)
            weight = np.outer(wy[:rows], wxx[:cols])
            weighted = scratch[:, :rows, :cols]
            np.multiply(result[0, :, :rows, :cols], weight, out=weighted)
            band[:, :rows, x : x + cols] += weighted
            band_w[:rows, x : x + cols] += weight
            if on_tile is not None:
                on_tile()
        done = (plan.ys[k + 1] - y) if k + 1 < len(plan.ys) else rows
        from_float_chw_into(band[:, :done] / band_w[:done], out[y : y + done])
        if k + 1 < len(plan.ys):
            keep = th - done
            band[:, :keep] = band[:, done:].copy()
            band_w[:keep] = band_w[done:].copy()
            band[:, keep:] = 0.0
            band_w[keep:] = 0.0
    return out


def band_bytes(plan: TilePlan) -> int:
    """Float32 accumulator memory of `run_tiled` for this plan (band of colours + weights)."""
    return plan.tile_h * plan.width * 4 * 4


__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_OVERLAP", "DEFAULT_TILE", "TilePlan", "band_bytes", "plan_tiles", "ramp", "run_tiled"]


def photo_copy(
    image: np.ndarray,
    side: int,
    multiple: int,
    fixed: tuple[int, int] | None = None,
    min_side: int = 0,
    max_side: int | None = None,
) -> np.ndarray:
    """A whole photo, downscaled so its long side is at most `side` (and it fits a fixed or
    bounded input), as float32 NCHW padded to the network's multiple: what a model's image-level
    estimate is computed on once per photo (Backend.photo_context).

    Subsampled to at most twice the target first (no image-sized float copy of a 24 MP photo),
    then resized with Pillow's antialiased bilinear filter, channel by channel in float.
    """
    from PIL import Image

    h, w = image.shape[:2]
    limit = side if max_side is None else min(side, max_side)
    scale = min(1.0, limit / max(h, w)) if fixed is None else min(1.0, fixed[0] / h, fixed[1] / w)
    step = max(1, int(1.0 / scale) // 2) if scale < 1 else 1
    small = to_float(image[::step, ::step])
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    if (sh, sw) != small.shape[:2]:
        small = np.stack([np.asarray(Image.fromarray(small[..., c]).resize((sw, sh), Image.Resampling.BILINEAR)) for c in range(3)], -1)
    if fixed is not None:
        th, tw = fixed
    else:
        th, tw = (max(min_side, -(-n // multiple) * multiple) for n in (sh, sw))
    return np.ascontiguousarray(_pad_to(small, th, tw).transpose(2, 0, 1)[None], dtype=np.float32)
