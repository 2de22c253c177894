"""Real reflection layers: gain fit, leak measure and suppression, the bank, composites, StepData."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.ndimage import shift as nd_shift

from dereflect.data import real_reflections as rr
from dereflect.data.photos import load_photos
from dereflect.images import write_image
from dereflect.metrics import ALIGNED_MAX_SHIFT, gt_shift
from dereflect.train.data import StepData, discover

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SAGGY = SHARED / "real_pairs_saggy361"


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return load_photos(None, max_side=192)


def _square(photo: np.ndarray, n: int = 128) -> np.ndarray:
    return np.ascontiguousarray(photo[:n, :n])


def _layers(photos) -> tuple[np.ndarray, np.ndarray]:
    """A transmission (linear) and an independent, blurred, dim reflection (linear)."""
    t = rr.srgb_to_linear(_square(photos[0]))
    r = 0.25 * gaussian_filter(rr.srgb_to_linear(_square(photos[1])), (2, 2, 0))
    return t, r


def test_fit_glass_gain_finds_the_gain_where_there_is_no_reflection(photos):
    t, r = _layers(photos)
    r[:, :60] = 0.0  # part of the photo has no reflection
    gain = np.array([0.8, 0.9, 1.05], np.float32)
    found = rr.fit_glass_gain(gain * t + r, t)
    np.testing.assert_allclose(found, gain, rtol=0.03)
    lsq = ((gain * t + r) * t).sum(axis=(0, 1)) / (t * t).sum(axis=(0, 1))
    assert (lsq > gain * 1.03).all()  # why not least squares: the reflection pulls it up


def test_leak_score_is_chance_for_an_independent_layer_and_high_for_t_itself(photos):
    t, r = _layers(photos)
    assert rr.leak_score(r, t) < 2 * rr.LEAK_EDGE_SHARE
    assert rr.leak_score(0.1 * t, t) > 0.5
    assert abs(rr.gradient_correlation(r, t)) < 0.2 < 0.9 < rr.gradient_correlation(0.1 * t, t)


def test_suppress_leak_removes_t_structure_and_keeps_the_reflection(photos):
    t, r = _layers(photos)
    gy, gx = np.gradient(t, axis=(0, 1))
    leaky = np.clip(r + 0.08 * t + 0.4 * gx - 0.3 * gy, 0.0, None)  # wrong gain + sub-pixel shift residue
    clean = rr.suppress_leak(leaky, t)
    before, after, truth = rr.leak_score(leaky, t), rr.leak_score(clean, t), rr.leak_score(r, t)
    assert before > truth + 0.1 and after < truth + 0.05, (before, after, truth)
    assert np.corrcoef(clean.ravel(), r.ravel())[0, 1] > 0.9  # the reflection itself is kept
    assert np.corrcoef(leaky.ravel(), r.ravel())[0, 1] < np.corrcoef(clean.ravel(), r.ravel())[0, 1]


def test_extract_reflection_aligns_fits_and_cleans_a_shifted_pair(photos):
    t, r = _layers(photos)
    r[:, :50] = 0.0
    blended = rr.linear_to_srgb(0.9 * t + r)
    shifted_t = nd_shift(rr.linear_to_srgb(t), (0.5, -0.5, 0), order=3, mode="nearest")
    b8, t8 = (np.round(np.clip(x, 0, 1) * 255).astype(np.uint8) for x in (blended, shifted_t))
    layer = rr.extract_reflection(b8, t8)
    np.testing.assert_allclose(layer.info["gain"], 0.9, atol=0.04)
    assert np.hypot(*layer.info["shift_px"]) == pytest.approx(np.hypot(0.5, 0.5), abs=0.2)
    assert layer.info["leak"] < layer.info["leak_naive"]
    inner = (slice(10, -10), slice(10, -10))
    assert np.corrcoef(layer.reflection[inner].ravel(), r[inner].ravel())[0, 1] > 0.9


def _tiny_bank(folder: Path, photos, n: int = 3) -> Path:
    (folder / rr.LAYER_DIR).mkdir(parents=True)
    entries = []
    for k in range(n):
        r = 0.2 * gaussian_filter(rr.srgb_to_linear(_square(photos[k + 1], 96)), (2, 2, 0))
        write_image(folder / rr.LAYER_DIR / f"l{k}.png", r.astype(np.float32), bit_depth=16)
        entries.append({"file": f"l{k}.png", "scene": str(k)})
    (folder / rr.BANK_INDEX).write_text(json.dumps({"format": rr.BANK_FORMAT, "version": 1, "layers": entries}))
    return folder


def test_bank_round_trip_and_discover(photos, tmp_path):
    bank_dir = _tiny_bank(tmp_path / "bank", photos)
    bank = rr.ReflectionBank(bank_dir)
    assert len(bank) == 3
    layer = bank.layer(1)
    assert layer.shape == (96, 96, 3) and layer.dtype == np.float32 and 0.0 <= layer.min() and layer.max() <= 0.25
    sources = discover([bank_dir])
    assert sources.reflections == [bank_dir] and not sources.photos and not sources.pairs
    (bank_dir / rr.BANK_INDEX).write_text("{}")
    with pytest.raises(Exception, match="bank.json"):
        rr.ReflectionBank(bank_dir)


def test_composites_are_pure_functions_of_seed_and_index(photos, tmp_path):
    bank = rr.ReflectionBank(_tiny_bank(tmp_path / "bank", photos))
    ds = rr.CompositePairs(photos, bank, size=64, length=10, seed=3)
    a, b, c = ds[4], ds[4], ds[5]
    for key in ("input", "transmission"):
        assert a[key].shape == (3, 64, 64) and a[key].dtype == torch.float32
        assert 0.0 <= a[key].min() and a[key].max() <= 1.0
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["input"], c["input"])
    assert not torch.equal(rr.CompositePairs(photos, bank, size=64, length=10, seed=4)[4]["input"], a["input"])


def test_composite_adds_light_over_the_glass_and_keeps_the_clean_label(photos, tmp_path):
    """input = srgb(g*T_lin + R): where R is zero the input is the label through the glass gain."""
    from dereflect.data.synth import glass_gain

    t = _square(photos[0], 96).astype(np.float32)
    rng = np.random.default_rng(0)
    zero = rr.composite_pair(t, np.zeros((96, 96, 3), np.float32), 96, rng, rr.CompositeConfig(shot_noise=(0, 0), read_noise=(0, 0)))
    ratio = rr.srgb_to_linear(zero["input"]).sum(axis=(0, 1)) / rr.srgb_to_linear(zero["transmission"]).sum(axis=(0, 1))
    draws = np.stack([glass_gain(np.random.default_rng(k)) for k in range(200)])
    assert (draws.min(axis=0) - 0.01 <= ratio).all() and (ratio <= draws.max(axis=0) + 0.01).all()
    lit = rr.composite_pair(t, np.full((96, 96, 3), 0.05, np.float32), 96, np.random.default_rng(0))
    np.testing.assert_array_equal(lit["transmission"], zero["transmission"])
    assert (lit["input"] >= zero["input"] - 0.02).all() and lit["input"].mean() > zero["input"].mean() + 0.02


class _Synth(torch.utils.data.Dataset):
    def __init__(self, photos) -> None:
        self.photos = photos

    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i: int) -> dict:
        return {"synthetic": torch.tensor(i)}


def test_stepdata_composite_source_share_and_unchanged_other_steps(photos, tmp_path):
    bank_dir = _tiny_bank(tmp_path / "bank", photos)
    pairs = [(np.zeros((80, 80, 3), np.uint8), np.zeros((80, 80, 3), np.uint8))]
    base = StepData(_Synth(photos), 2, 7, pairs, 0.4, size=48)
    mixed = StepData(_Synth(photos), 2, 7, pairs, 0.4, size=48, composites=[bank_dir], composite_fraction=0.3)
    none = StepData(_Synth(photos), 2, 7, pairs, 0.4, size=48, composites=[bank_dir], composite_fraction=0.0)
    steps = range(2000)
    src_base, src_mixed = [base.source(s) for s in steps], [mixed.source(s) for s in steps]
    assert src_base == [none.source(s) for s in steps]  # a bank at fraction 0 changes nothing
    assert [s for s, b in zip(src_mixed, src_base) if b == "real"] == ["real"] * src_base.count("real")
    assert src_mixed.count("composite") / 2000 == pytest.approx(0.3, abs=0.04)
    i = 2 * src_mixed.index("composite")
    item = mixed[i]
    assert set(item) == {"input", "transmission"} and item["input"].shape == (3, 48, 48)
    assert torch.equal(item["input"], mixed[i]["input"])


# --------------------------------------------------------------------------------------------
# on the real pairs (skipped where ../shared/data is absent)

needs_saggy = pytest.mark.skipif(not SAGGY.is_dir(), reason="real_pairs_saggy361 not present (../shared/data)")


@needs_saggy
def test_only_training_scenes_feed_the_bank():
    from dereflect.data.datasets import scene_of, scene_split

    names = sorted(p.stem for p in (SAGGY / "blended").iterdir())
    _, val = scene_split(names, 0.1, seed=0)
    used = {scene_of(n) for n, _, _ in rr.saggy_training_pairs(SHARED)}
    assert used and not used & {scene_of(n) for n in val}


@needs_saggy
def test_real_layers_lose_their_leaked_edges():
    """On three aligned training pairs, suppression brings the leak score down towards chance."""
    from dereflect.images import read_rgb

    before, after = [], []
    for name in ("1-1", "28-2", "68-1"):
        b, t = read_rgb(SAGGY / "blended" / f"{name}.jpeg"), read_rgb(SAGGY / "transmission" / f"{name}.jpeg")
        assert gt_shift(t, b) <= ALIGNED_MAX_SHIFT
        info = rr.extract_reflection(b, t).info
        before.append(info["leak_naive"])
        after.append(info["leak"])
    assert np.mean(after) < 0.7 * np.mean(before) and np.mean(after) < rr.MAX_LEAK, (before, after)


def test_student_trainer_draws_composites_from_a_bank_in_data(photos, tmp_path):
    """A bank passed with --data and composite_fraction > 0 feeds the student's StepData."""
    from dereflect.models import create_model, save_checkpoint
    from dereflect.train.config import load_config
    from dereflect.train.student import StudentTrainer

    bank_dir = _tiny_bank(tmp_path / "bank", photos)
    teacher = save_checkpoint(create_model("teacher-small"), tmp_path / "t.safetensors")
    cfg = load_config(
        "student",
        None,
        {
            "steps": 2,
            "batch": 2,
            "size": 32,
            "perceptual": "off",
            "gan": "off",
            "val_samples": 2,
            "composite_fraction": 0.6,
            "model_overrides": {"use_kt": False},
            "loss": {"kt": 0.0},
        },
    )
    trainer = StudentTrainer(cfg, tmp_path / "run", teacher=teacher, data_dirs=[bank_dir], device="cpu", progress=False)
    sources = [trainer.dataset.source(s) for s in range(400)]
    assert sources.count("composite") / 400 == pytest.approx(0.6, abs=0.08)
    item = trainer.dataset[sources.index("composite") * cfg.batch]
    assert set(item) == {"input", "transmission"} and item["input"].shape == (3, 32, 32)
    assert "reflection banks" in trainer.data_description()
