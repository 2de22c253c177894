"""Multi-view synthesis: determinism, shapes, ranges, exact flows, T + R = frame, files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from dereflect.data.photos import load_photos
from dereflect.data.synth import (
    SynthConfig,
    SynthSequence,
    contact_sheet,
    read_sequence,
    synthesize_sequence,
    write_sequence,
)
from dereflect.errors import DereflectError, UsageError
from dereflect.models.blocks import warp

NO_NOISE = dict(shot_noise=(0.0, 0.0), read_noise=(0.0, 0.0))


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return load_photos(None, max_side=192)


def _seq(photos, seed=0, n=5, size=64, config=None, t=0, r=1) -> SynthSequence:
    return synthesize_sequence(photos[t], photos[r], n_frames=n, size=size, rng=np.random.default_rng(seed), config=config)


def _warp_error(layer: np.ndarray, flow: np.ndarray, middle: int) -> list[float]:
    """Mean |warp(layer_i, flow_i) - layer_mid| over pixels whose source lies inside frame i
    (2-px border dropped: bilinear sampling there mixes in the zero padding)."""
    ref = torch.from_numpy(layer[middle]).permute(2, 0, 1)[None]
    errs = []
    for i in range(layer.shape[0]):
        x = torch.from_numpy(layer[i]).permute(2, 0, 1)[None]
        f = torch.from_numpy(np.ascontiguousarray(flow[i])).permute(2, 0, 1)[None]
        out, mask = warp(x, f, return_mask=True)
        mask = -torch.nn.functional.max_pool2d(-mask, 5, 1, 2)  # erode by 2 px
        errs.append(float(((out - ref).abs() * mask).sum() / (3 * mask.sum())))
    return errs


def test_same_seed_same_sequence_other_seed_other(photos):
    a, b, c = _seq(photos, seed=3), _seq(photos, seed=3), _seq(photos, seed=4)
    for key in ("frames", "transmission", "reflection", "flow_T", "flow_R"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.params == b.params
    assert not np.allclose(a.frames, c.frames)
    json.dumps(a.params)  # what was drawn is plain JSON


@pytest.mark.parametrize("n", [3, 5])
def test_shapes_dtypes_and_ranges(photos, n):
    s = _seq(photos, n=n, size=48)
    for key in ("frames", "transmission", "reflection"):
        arr = getattr(s, key)
        assert arr.shape == (n, 48, 48, 3) and arr.dtype == np.float32
        assert arr.min() >= 0.0 and arr.max() <= 1.0
    for key in ("flow_T", "flow_R"):
        arr = getattr(s, key)
        assert arr.shape == (n, 48, 48, 2) and arr.dtype == np.float32 and np.isfinite(arr).all()
    assert s.middle == n // 2 and len(s.params["blur_sigma"]) == n


def test_bad_arguments_are_refused(photos):
    with pytest.raises(UsageError, match="odd"):
        _seq(photos, n=4)
    with pytest.raises(DereflectError, match="transmission source.*shape"):
        synthesize_sequence(np.zeros((32, 32, 5)), photos[1], rng=np.random.default_rng(0))
    with pytest.raises(DereflectError, match="too small"):
        synthesize_sequence(photos[0], np.zeros((4, 40, 3)), rng=np.random.default_rng(0))


def test_middle_frame_flows_are_zero_and_others_are_not(photos):
    s = _seq(photos, seed=1)
    m = s.middle
    assert not s.flow_T[m].any() and not s.flow_R[m].any()
    assert np.abs(s.flow_T[0]).mean() > 0.1
    # T and R move differently (R has its own parallax): not one flow for both layers
    assert np.linalg.norm(s.flow_T[0] - s.flow_R[0], axis=-1).mean() > 0.5


def test_frames_are_transmission_plus_reflection(photos):
    s = _seq(photos, seed=2, config=SynthConfig(**NO_NOISE))
    np.testing.assert_allclose(s.frames, s.transmission + s.reflection, atol=2e-6)
    noisy = _seq(photos, seed=2, config=SynthConfig(shot_noise=(1e-3, 1e-3), read_noise=(2e-3, 2e-3)))
    residual = noisy.frames - noisy.transmission - noisy.reflection
    assert 1e-3 < np.abs(residual).mean() < 0.03  # the sensor noise, and nothing more
    assert abs(residual.mean()) < 4e-3
    assert s.reflection.mean() > 0.005  # there is a reflection at all


def test_transmission_flows_reproduce_the_middle_frame(photos):
    """On a photo textured down to what bilinear resampling reproduces (so a flow off by a
    fraction of a pixel shows), and on the photo itself (double interpolation blurs detail)."""
    smooth = gaussian_filter(photos[0], sigma=(2.0, 2.0, 0.0))
    s = synthesize_sequence(smooth, photos[1], n_frames=5, size=96, rng=np.random.default_rng(5))
    good = _warp_error(s.transmission, s.flow_T, s.middle)
    half_px = _warp_error(s.transmission, s.flow_T + 0.5, s.middle)
    for i in (0, 1, 3, 4):
        assert good[i] < 0.003, good
        assert good[i] < 0.3 * half_px[i], (good, half_px)
    s = _seq(photos, seed=5, size=96)
    good = _warp_error(s.transmission, s.flow_T, s.middle)
    none = _warp_error(s.transmission, np.zeros_like(s.flow_T), s.middle)
    for i in (0, 1, 3, 4):
        assert good[i] < 0.02, good
        assert good[i] < 0.25 * none[i], (good, none)


def test_reflection_flows_reproduce_the_middle_reflection(photos):
    """R's flows are tested on a flat T (the gamma-space residual then depends on R alone) with
    one blur sigma for all frames; ghosting and the strength map stay on."""
    cfg = SynthConfig(blur_jitter=0.0, ghost_prob=1.0, **NO_NOISE)
    flat = np.full((200, 200, 3), 0.4, np.float32)
    s = synthesize_sequence(flat, photos[0], n_frames=5, size=96, rng=np.random.default_rng(7), config=cfg)
    assert s.params["ghost"] is not None
    good = _warp_error(s.reflection, s.flow_R, s.middle)
    wrong = _warp_error(s.reflection, s.flow_T, s.middle)
    for i in (0, 1, 3, 4):
        assert good[i] < 0.004, good
        assert good[i] < 0.25 * wrong[i], (good, wrong)


def test_write_read_round_trip(photos, tmp_path):
    s = _seq(photos, seed=9, n=3, size=40)
    folder = write_sequence(s, tmp_path / "seq")
    names = ["frame_000.png", "frame_001.png", "frame_002.png"]
    assert sorted(p.name for p in folder.glob("frame_*.png")) == names
    for sub in ("transmission", "reflection"):
        assert sorted(p.name for p in (folder / sub).iterdir()) == names
    assert Image.open(folder / "frame_000.png").mode == "RGB"  # plain 8-bit PNG any viewer opens
    back = read_sequence(folder)
    np.testing.assert_allclose(back.frames, s.frames, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(back.transmission, s.transmission, atol=0.5 / 65535 + 1e-6)
    np.testing.assert_allclose(back.reflection, s.reflection, atol=0.5 / 65535 + 1e-6)
    np.testing.assert_array_equal(back.flow_T, s.flow_T)
    np.testing.assert_array_equal(back.flow_R, s.flow_R)
    assert back.params == json.loads(json.dumps(s.params))


def test_read_sequence_errors_name_the_file(photos, tmp_path):
    with pytest.raises(DereflectError, match="no frame_"):
        read_sequence(tmp_path)
    folder = write_sequence(_seq(photos, n=3, size=24), tmp_path / "seq")
    np.save(folder / "flow_R.npy", np.zeros((3, 24, 20, 2), np.float32))
    with pytest.raises(DereflectError) as err:
        read_sequence(folder)
    assert "flow_R.npy" in str(err.value) and "(3, 24, 20, 2)" in str(err.value)
    (folder / "reflection" / "frame_001.png").unlink()
    with pytest.raises(DereflectError, match="frame_001.png"):
        read_sequence(folder)


def test_strength_scales_the_reflection(photos):
    weak = _seq(photos, seed=4, config=SynthConfig(strength=(0.1, 0.1), **NO_NOISE))
    strong = _seq(photos, seed=4, config=SynthConfig(strength=(0.5, 0.5), **NO_NOISE))
    assert strong.reflection.mean() > 2.5 * weak.reflection.mean()
    np.testing.assert_allclose(strong.transmission, weak.transmission)


def test_contact_sheet_layout(photos):
    seqs = [_seq(photos, seed=k, n=3, size=32) for k in range(2)]
    sheet = contact_sheet(seqs, gap=4)
    assert sheet.dtype == np.uint8 and sheet.shape == (14 + 2 * 36, 5 * 36, 3)
    np.testing.assert_array_equal(sheet[14 : 14 + 32, 0:32], np.round(seqs[0].frames[0] * 255).astype(np.uint8))


def test_config_is_a_plain_dataclass():
    cfg = replace(SynthConfig(), ghost_prob=0.0)
    assert cfg.ghost_prob == 0.0 and SynthConfig().ghost_prob > 0.0


# --------------------------------------------------------------------------------------------
# the glass transform (fitted on saggy361's training pairs: tools/fit_glass.py)


def test_glass_gain_draws_follow_the_fitted_distribution():
    from dereflect.data.synth import GLASS_GAIN_AT, GLASS_QUANTILES, glass_gain

    rng = np.random.default_rng(0)
    draws = np.stack([glass_gain(rng) for _ in range(4000)])
    logs = np.log(draws)
    overall = np.exp(logs.mean(axis=1))
    inner = slice(1, -1)  # the 1 % / 99 % ends are the support's edges
    np.testing.assert_allclose(np.quantile(overall, GLASS_QUANTILES[inner]), GLASS_GAIN_AT[inner], atol=0.02)
    tint_std = (logs - logs.mean(axis=1, keepdims=True)).std(axis=0)
    np.testing.assert_allclose(tint_std, [0.0711, 0.0574, 0.0979], rtol=0.1)  # tools/fit_glass.py's tint_log_std


@pytest.mark.parametrize("in_label", [False, True])
def test_synthetic_labels_carry_the_glass_like_real_ones(photos, in_label):
    """With glass_in_label=False the label is the scene without the glass (as real ground truth
    is shot), so the estimator that fitted real pairs (real_reflections.fit_glass_gain) reads the
    drawn gain back from (frame, label); with True (the teacher's layers) it reads 1."""
    from dereflect.data.real_reflections import fit_glass_gain, srgb_to_linear

    cfg = SynthConfig(strength=(0.02, 0.02), glass_in_label=in_label, **NO_NOISE)
    for seed in range(3):
        s = _seq(photos, seed=seed, n=3, size=96, config=cfg)
        m = s.middle
        found = fit_glass_gain(srgb_to_linear(s.frames[m]), srgb_to_linear(s.transmission[m]))
        expected = np.ones(3) if in_label else np.asarray(s.params["glass_gain"])
        np.testing.assert_allclose(found, expected, rtol=0.04)


@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "shared" / "data" / "real_pairs_saggy361").is_dir(),
    reason="real_pairs_saggy361 not present (../shared/data)",
)
def test_fitted_glass_numbers_match_a_refit_on_real_training_pairs():
    """Every 15th training pair, refitted: the median overall gain is the one synth draws around."""
    from dereflect.data.datasets import scene_split
    from dereflect.data.real_reflections import fit_glass_gain, srgb_to_linear
    from dereflect.data.synth import GLASS_GAIN_AT, GLASS_QUANTILES
    from dereflect.images import read_rgb

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_pairs_saggy361"
    train, _ = scene_split(sorted(p.stem for p in (root / "blended").iterdir()), 0.1, seed=0)
    gains = [
        fit_glass_gain(
            srgb_to_linear(read_rgb(root / "blended" / f"{n}.jpeg") / 255.0),
            srgb_to_linear(read_rgb(root / "transmission" / f"{n}.jpeg") / 255.0),
        )
        for n in train[::15]
    ]
    overall = np.exp(np.log(np.stack(gains)).mean(axis=1))
    assert np.median(overall) == pytest.approx(GLASS_GAIN_AT[GLASS_QUANTILES.index(0.5)], abs=0.04)
