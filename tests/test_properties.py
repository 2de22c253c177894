"""Property-based tests (hypothesis) of the code every image passes through: io, metrics, tiling,
and the manifest parser.

Each property is something the rest of the project relies on without checking: a lossless format
gives back the exact array, a bad file is one DereflectError, SSIM never exceeds 1, LMSE does not
care about the estimate's scale, tiles cover every pixel and a pointwise model gives the same
result tiled or whole, a hand-edited manifest is refused with a message and never a traceback.
Examples are bounded (max_examples) so the file runs in seconds; a failure prints the
`@reproduce_failure` blob that replays it.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dereflect import metrics
from dereflect.errors import DereflectError
from dereflect.export import manifest as mf
from dereflect.images import read_image, write_image
from dereflect.runtime import tiling
from dereflect.runtime.backends import Backend
from dereflect.runtime.session import Session

SEEDS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus" / "decode"
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LOSSLESS_8 = (".png", ".tif", ".bmp")
LOSSLESS_16 = (".png", ".tif")


def images(dtype: type, max_side: int = 24, channels: int | None = 3) -> st.SearchStrategy[np.ndarray]:
    """HxWx3 (or HxW) arrays of any values, 1x1 up to max_side, including primes."""
    side = st.integers(1, max_side)
    shape = st.tuples(side, side) if channels is None else st.tuples(side, side, st.just(channels))
    return hnp.arrays(dtype, shape, elements=st.integers(0, np.iinfo(dtype).max))


def _read_quiet(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_image(path)


# ============================================================================ io
@FAST
@given(pixels=images(np.uint8), suffix=st.sampled_from(LOSSLESS_8))
def test_8bit_lossless_round_trip(tmp_path_factory: pytest.TempPathFactory, pixels: np.ndarray, suffix: str) -> None:
    path = tmp_path_factory.mktemp("rt8") / f"x{suffix}"
    write_image(path, pixels)
    img = read_image(path)
    assert img.bit_depth == 8 and img.pixels.dtype == np.uint8
    np.testing.assert_array_equal(img.pixels, pixels)


@FAST
@given(pixels=images(np.uint16), alpha=st.booleans(), suffix=st.sampled_from(LOSSLESS_16))
def test_16bit_round_trip_with_alpha(tmp_path_factory: pytest.TempPathFactory, pixels: np.ndarray, alpha: bool, suffix: str) -> None:
    path = tmp_path_factory.mktemp("rt16") / f"x{suffix}"
    a = pixels[..., 1][::-1].copy() if alpha else None
    write_image(path, pixels, alpha=a)
    img = read_image(path)
    assert img.bit_depth == 16 and img.pixels.dtype == np.uint16
    np.testing.assert_array_equal(img.pixels, pixels)
    if alpha:
        np.testing.assert_array_equal(img.alpha, a)
    else:
        assert img.alpha is None


@FAST
@given(grey=images(np.uint16, channels=None), suffix=st.sampled_from(LOSSLESS_16))
def test_16bit_grey_round_trip_becomes_rgb(tmp_path_factory: pytest.TempPathFactory, grey: np.ndarray, suffix: str) -> None:
    path = tmp_path_factory.mktemp("grey16") / f"x{suffix}"
    write_image(path, grey)
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, np.repeat(grey[..., None], 3, axis=2))


@FAST
@given(pixels=images(np.uint16), suffix=st.sampled_from(LOSSLESS_8))
def test_16bit_to_8bit_format_rounds(tmp_path_factory: pytest.TempPathFactory, pixels: np.ndarray, suffix: str) -> None:
    """A uint16 array written with bit_depth=8 comes back as the rounded 8-bit values."""
    path = tmp_path_factory.mktemp("down") / f"x{suffix}"
    write_image(path, pixels, bit_depth=8)
    expected = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path).pixels, expected)


@FAST
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    colour=st.tuples(*[st.integers(0, 255)] * 3),
    dtype=st.sampled_from([np.uint8, np.uint16]),
    suffix=st.sampled_from([".jpg", ".webp"]),
)
def test_lossy_formats_keep_size_and_flat_colour(
    tmp_path_factory: pytest.TempPathFactory, h: int, w: int, colour: tuple[int, int, int], dtype: type, suffix: str
) -> None:
    """JPEG/WebP: any size (1x1 included) and 16-bit input are written as 8-bit; a flat colour
    survives within a few levels (chroma subsampling and colour transforms round a little)."""
    pixels = np.empty((h, w, 3), np.uint8)
    pixels[:] = colour
    source = pixels.astype(np.uint16) * np.uint16(257) if dtype == np.uint16 else pixels
    path = tmp_path_factory.mktemp("lossy") / f"x{suffix}"
    write_image(path, source)
    img = read_image(path)
    assert img.pixels.shape == (h, w, 3) and img.bit_depth == 8
    assert np.abs(img.pixels.astype(int) - pixels).max() <= 4


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


@FAST
@given(
    seed=st.sampled_from(sorted(p.name for p in SEEDS.iterdir()) if SEEDS.is_dir() else ["none"]),
    edits=st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=8),
    cut=st.none() | st.integers(0, 2048),
)
def test_mutated_images_give_an_image_or_one_dereflect_error(
    tmp_path_factory: pytest.TempPathFactory, seed: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    """Valid seed files (fuzz/corpus/decode) with bytes changed or cut off: decoded, or refused
    with a DereflectError that names the file; never another exception."""
    if seed == "none":
        pytest.skip("fuzz/corpus/decode is missing")
    path = tmp_path_factory.mktemp("mut") / seed
    path.write_bytes(_mutate((SEEDS / seed).read_bytes(), edits, cut))
    try:
        img = _read_quiet(path)
    except DereflectError as exc:
        assert exc.path == str(path) and exc.problem
        return
    assert img.pixels.ndim == 3 and img.pixels.shape[2] == 3 and img.pixels.dtype in (np.uint8, np.uint16)


@FAST
@given(data=st.binary(max_size=512), suffix=st.sampled_from(sorted({".png", ".jpg", ".tif", ".webp", ".bmp", ".gif", ""})))
def test_random_bytes_are_one_dereflect_error(tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("rnd") / f"x{suffix}"
    path.write_bytes(data)
    try:
        img = _read_quiet(path)
    except DereflectError as exc:
        assert exc.path == str(path)
        assert exc.problem == "empty file (0 bytes)" if not data else exc.problem
        return
    assert img.pixels.ndim == 3  # random bytes that happen to be an image (e.g. a valid header)


# ============================================================================ metrics
pairs = st.integers(20, 40).flatmap(
    lambda h: st.integers(20, 40).flatmap(lambda w: st.tuples(*[hnp.arrays(np.uint8, (h, w, 3), elements=st.integers(0, 255))] * 2))
)


@FAST
@given(pair=pairs)
def test_metric_ranges_and_symmetry(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    s_ab, s_ba = metrics.ssim(a, b), metrics.ssim(b, a)
    assert -1.0 <= s_ab <= 1.0
    assert s_ab == pytest.approx(s_ba, abs=1e-14)  # exact window sums; only the last float ops differ
    p_ab = metrics.psnr(a, b)
    assert p_ab == metrics.psnr(b, a) and p_ab >= 0.0
    # inf when any channel matches exactly (the per-channel mean of an inf is inf)
    assert (p_ab == math.inf) == any(np.array_equal(a[..., c], b[..., c]) for c in range(3))
    l_ab = metrics.lmse(a, b)
    assert 0.0 <= l_ab <= 1.0 + 1e-12  # the best per-window scale is never worse than scale 0
    n_ab = metrics.ncc(a, b)
    if not math.isnan(n_ab):
        assert -1.0 - 1e-12 <= n_ab <= 1.0 + 1e-12
        assert n_ab == pytest.approx(metrics.ncc(b, a), abs=1e-12)


@FAST
@given(pair=pairs)
def test_identical_images_are_perfect(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, _ = pair
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.lmse(a, a) == pytest.approx(0.0, abs=1e-12)


@FAST
@given(pair=pairs, scale=st.floats(0.05, 20.0))
def test_lmse_is_invariant_to_the_estimates_scale(pair: tuple[np.ndarray, np.ndarray], scale: float) -> None:
    gt, est = pair
    est = est.astype(np.float64) + 1.0  # every window has energy: the 1e-5 floor never decides
    assert metrics.lmse(gt, est * scale) == pytest.approx(metrics.lmse(gt, est), rel=1e-9, abs=1e-12)


@FAST
@given(pair=pairs, gain=st.floats(0.1, 10.0), offset=st.floats(-50.0, 50.0))
def test_ncc_is_invariant_to_gain_and_offset(pair: tuple[np.ndarray, np.ndarray], gain: float, offset: float) -> None:
    gt, est = pair
    assume(est.std() > 0 and gt.std() > 0)
    e = est.astype(np.float64)
    assert metrics.ncc(gt, e * gain + offset) == pytest.approx(metrics.ncc(gt, e), abs=1e-9)


@FAST
@given(pair=pairs)
def test_float_ssim_matches_uint8_ssim(pair: tuple[np.ndarray, np.ndarray]) -> None:
    """The float path (not integer-exact) gives the same number as the exact one and stays <= 1."""
    a, b = pair
    f = metrics.ssim(a.astype(np.float64), b.astype(np.float64))
    assert f <= 1.0 + 1e-12 and f == pytest.approx(metrics.ssim(a, b), abs=1e-9)


# ============================================================================ tiling
sizes = st.integers(1, 160) | st.sampled_from([1, 2, 3, 5, 7, 13, 31, 61, 127, 131, 157])


@settings(max_examples=150, deadline=None)
@given(h=sizes, w=sizes, tile=st.none() | st.integers(16, 96), overlap=st.integers(0, 48), multiple=st.sampled_from([1, 8, 16]))
def test_plan_covers_every_pixel(h: int, w: int, tile: int | None, overlap: int, multiple: int) -> None:
    plan = tiling.plan_tiles(h, w, multiple=multiple, tile=tile, overlap=overlap)
    for origins, size, side in ((plan.ys, plan.tile_h, h), (plan.xs, plan.tile_w, w)):
        assert size % multiple == 0 and all(o % multiple == 0 for o in origins)
        assert origins[0] == 0 and list(origins) == sorted(set(origins))
        assert origins[-1] + size >= side  # the last tile reaches the edge
        assert all(b - a <= size - plan.overlap for a, b in zip(origins, origins[1:]))  # no gap, overlap kept
        if tile is not None:
            assert size <= max(tile - tile % multiple, multiple)


def _blend_weights(plan: tiling.TilePlan) -> np.ndarray:
    """The raw weight every pixel gets, summed over the tiles that cover it (what run_tiled divides by)."""
    canvas_h, canvas_w = max(plan.ys) + plan.tile_h, max(plan.xs) + plan.tile_w
    total = np.zeros((canvas_h, canvas_w))
    for y in plan.ys:
        for x in plan.xs:
            wy = tiling._weights_1d(plan.tile_h, y, canvas_h, plan.overlap)
            wx = tiling._weights_1d(plan.tile_w, x, canvas_w, plan.overlap)
            total[y : y + plan.tile_h, x : x + plan.tile_w] += np.outer(wy, wx)
    return total[: plan.height, : plan.width]


@settings(max_examples=100, deadline=None)
@given(h=sizes, w=sizes, tile=st.integers(16, 64), overlap=st.integers(0, 40))
def test_blend_weights_are_positive_everywhere(h: int, w: int, tile: int, overlap: int) -> None:
    """Every pixel gets weight from some tile (no 0/0), and where exactly two tiles share the
    planned overlap the complementary ramps sum to one without normalising."""
    plan = tiling.plan_tiles(h, w, tile=tile, overlap=overlap)
    total = _blend_weights(plan)
    assert total.min() > 0.0
    r = tiling.ramp(plan.overlap) if plan.overlap else np.zeros(0)
    np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-6)


class Pointwise(Backend):
    """A "network" that maps every pixel on its own, so tiling cannot change its result."""

    name = "pointwise"

    def __init__(self, gain: float = 1.0, offset: float = 0.0, multiple: int = 8) -> None:
        self.gain, self.offset, self.multiple = np.float32(gain), np.float32(offset), multiple
        self.shapes: list[tuple[int, ...]] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.shape[2] % self.multiple == 0 and batch.shape[3] % self.multiple == 0
        self.shapes.append(batch.shape)
        return batch * self.gain + self.offset


@settings(max_examples=60, deadline=None)
@given(image=images(np.uint8, max_side=90), tile=st.integers(16, 48), overlap=st.integers(0, 32))
def test_tiled_identity_is_exact_for_any_size(image: np.ndarray, tile: int, overlap: int) -> None:
    whole = Session(Pointwise(), None).run(image)
    tiled_impl = Pointwise()
    tiled = Session(tiled_impl, None, tile=tile, overlap=overlap).run(image)
    np.testing.assert_array_equal(whole, image)
    np.testing.assert_array_equal(tiled, image)
    assert len(tiled_impl.shapes) == Session(Pointwise(), None, tile=tile, overlap=overlap).plan(*image.shape[:2]).count


@settings(max_examples=60, deadline=None)
@given(image=images(np.uint8, max_side=90), tile=st.integers(16, 48), overlap=st.integers(0, 32))
def test_tiled_equals_whole_for_a_pointwise_affine_model(image: np.ndarray, tile: int, overlap: int) -> None:
    """0.5 x + 0.25 maps level v to 0.5 v + 63.75: never a .5, so rounding cannot flip a level."""
    model = dict(gain=0.5, offset=0.25)
    whole = Session(Pointwise(**model), None).run(image)
    tiled = Session(Pointwise(**model), None, tile=tile, overlap=overlap).run(image)
    np.testing.assert_array_equal(tiled, whole)
    np.testing.assert_array_equal(whole, np.rint(image * 0.5 + 63.75).astype(np.uint8))


@settings(max_examples=40, deadline=None)
@given(
    image=hnp.arrays(np.float32, st.tuples(st.integers(1, 70), st.integers(1, 70), st.just(3)), elements=st.floats(0.0, 1.0, width=32)),
    tile=st.integers(16, 40),
    overlap=st.integers(0, 24),
)
def test_tiled_float_and_uint16_match_whole(image: np.ndarray, tile: int, overlap: int) -> None:
    tiled = Session(Pointwise(), None, tile=tile, overlap=overlap).run(image)
    assert tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, image, atol=1e-6)
    as16 = np.rint(image * 65535).astype(np.uint16)
    np.testing.assert_array_equal(Session(Pointwise(), None, tile=tile, overlap=overlap).run(as16), as16)


# ============================================================================ manifest parser
def _valid_manifest() -> dict[str, Any]:
    return {
        "schema": mf.SCHEMA,
        "format": "onnx",
        "precision": "fp32",
        "runtime": "onnxruntime",
        "artifact": "model.onnx",
        "artifact_kind": "file",
        "artifact_sha256": "a" * 64,
        **mf.io_spec(),
        "source": {"checkpoint": "x.safetensors"},
        "tools": {"python": "3"},
        "parity": {"status": "passed", "max_abs_diff": 0.0},
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (dict keys and list indices)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, prefix + (i,))
    return found


@st.composite
def edited_manifests(draw: st.DrawFn) -> Any:
    """A valid manifest with 1-4 random edits: a value replaced, a key deleted, or a key added."""
    data: Any = _valid_manifest()
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(data)))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            data = draw(json_values) if action == "replace" else data
            continue
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
    return data


@settings(max_examples=200, deadline=None)
@given(data=edited_manifests())
def test_edited_manifest_is_valid_or_one_dereflect_error(data: Any) -> None:
    try:
        out = mf.validate_manifest(copy.deepcopy(data), "m.json")
    except DereflectError as exc:
        assert exc.path == "m.json" and exc.problem
        return
    assert out["schema"] == mf.SCHEMA and isinstance(out["constraints"]["multiple_of"], int)


@FAST
@given(
    text=st.one_of(
        st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
        json_values.map(lambda v: json.dumps(v)),
        edited_manifests().map(lambda v: json.dumps(v)),
    )
)
def test_manifest_files_parse_or_raise_dereflect_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    """read_manifest / find_artifacts / load_manifest_for on any file content: DereflectError only."""
    folder = tmp_path_factory.mktemp("man")
    (folder / "model.onnx").write_bytes(b"onnx")
    path = mf.manifest_path(folder / "model.onnx")
    path.write_text(text, encoding="utf-8")
    for call in (lambda: mf.read_manifest(path), lambda: mf.find_artifacts(folder), lambda: mf.load_manifest_for(folder / "model.onnx")):
        try:
            call()
        except DereflectError as exc:
            assert exc.path is not None and exc.problem


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[" * 100_000, "not valid JSON"),  # nesting deeper than the parser's recursion limit
        ("1" * 5000, "not valid JSON"),  # an integer longer than Python converts
        ('{"schema": "' + mf.SCHEMA + '"' + ', "x": 1' * 10 + "}", "no 'format'"),
    ],
)
def test_pathological_manifest_text(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "m.onnx.json"
    path.write_text(text)
    with pytest.raises(DereflectError, match=problem):
        mf.read_manifest(path)
