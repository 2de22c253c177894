"""Synthesis on the training device: same distributions as data/synth.py, exact flows and layers,
determinism per (seed, step), layouts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.stats import ks_2samp

from dereflect.data.datasets import SyntheticSequences
from dereflect.data.device_synth import KEYS, DeviceSynthesizer, step_seed
from dereflect.data.photos import load_photos
from dereflect.data.synth import SynthConfig, srgb_to_linear
from dereflect.errors import DereflectError, UsageError
from dereflect.models.blocks import warp

NO_NOISE = dict(shot_noise=(0.0, 0.0), read_noise=(0.0, 0.0))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared machine two threads oversubscribe the cores and the
    per-item reference path slows down 20x (measured: 1.3 s -> 29 s for 240 items)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return load_photos(None, max_side=128)


@pytest.fixture(scope="module")
def photos_u8(photos) -> list[np.ndarray]:
    return [np.round(p * 255).astype(np.uint8) for p in photos]


def _stats(b: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per-sample summaries of what a model sees and learns from (middle frame, end-frame flows)."""
    t, r = b["transmission"], b["reflection"]
    ft, fr = b["flow_T"][:, 0], b["flow_R"][:, 0]

    def sharpness(x: torch.Tensor) -> torch.Tensor:  # |Laplacian| relative to the contrast: blur lowers it
        lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
        return lap.abs().mean((1, 2, 3)) / ((x - x.mean((1, 2, 3), keepdim=True)).abs().mean((1, 2, 3)) + 1e-4)

    out = {
        "|input - T|": (b["input"] - t).abs().mean((1, 2, 3)),
        "R mean": r.mean((1, 2, 3)),
        "T mean": t.mean((1, 2, 3)),
        "T saturation": (t - t.mean(1, keepdim=True)).abs().mean((1, 2, 3)),
        "|flow_T|": ft.norm(dim=1).mean((1, 2)),
        "|flow_R|": fr.norm(dim=1).mean((1, 2)),
        "|flow_R - flow_T|": (fr - ft).norm(dim=1).mean((1, 2)),
        "R/T motion": fr.norm(dim=1).mean((1, 2)) / ft.norm(dim=1).mean((1, 2)),
        "R sharpness": sharpness(r),
        "T sharpness": sharpness(t),
        "noise": (b["frames"] - b["transmission_all"] - b["reflection_all"]).std((1, 2, 3, 4)),
    }
    return {k: v.numpy() for k, v in out.items()}


def test_distributions_match_synth_py(photos, photos_u8):
    """240 samples from each generator (same photos, 48 px): every summary passes a two-sample KS
    test at alpha = 0.001 (D < 0.178 for 240 vs 240) and its median is within 20 %."""
    n, size = 240, 48
    ds = SyntheticSequences(photos, size=size, length=n, seed=1)
    items = [ds[i] for i in range(n)]
    old = _stats({k: torch.stack([it[k] for it in items]) for k in KEYS})
    syn = DeviceSynthesizer(photos_u8, "cpu", size=size, seed=1)
    batches = [syn.batch(step, 80) for step in range(n // 80)]
    new = _stats({k: torch.cat([b[k] for b in batches]) for k in KEYS})
    report = {k: (ks_2samp(old[k], new[k]).statistic, np.median(old[k]), np.median(new[k])) for k in old}
    for k, (d, m_old, m_new) in report.items():
        assert d < 0.178, (k, report)
        assert abs(m_new - m_old) <= 0.2 * abs(m_old), (k, report)


def test_a_wrong_range_is_caught(photos, photos_u8):
    """The comparison above has teeth: doubling T's motion range is detected."""
    ds = SyntheticSequences(photos, size=48, length=100, seed=2)
    items = [ds[i] for i in range(100)]
    old = _stats({k: torch.stack([it[k] for it in items]) for k in KEYS})
    cfg = replace(SynthConfig(), t_shift=(4.0, 28.0))
    new = _stats(DeviceSynthesizer(photos_u8, "cpu", size=48, seed=2, config=cfg).batch(0, 100))
    assert ks_2samp(old["|flow_T|"], new["|flow_T|"]).statistic > 0.3


def test_keys_shapes_ranges_and_zero_middle_flows(photos_u8):
    b = DeviceSynthesizer(photos_u8, "cpu", n_frames=3, size=40).batch(0, 3)
    assert tuple(b) == KEYS
    for k in ("frames", "transmission_all", "reflection_all"):
        assert b[k].shape == (3, 3, 3, 40, 40)
    for k in ("input", "transmission", "reflection"):
        assert b[k].shape == (3, 3, 40, 40)
    for k in ("flow_T", "flow_R"):
        assert b[k].shape == (3, 3, 2, 40, 40) and torch.isfinite(b[k]).all()
        assert not b[k][:, 1].any()
        assert b[k][:, 0].abs().mean() > 0.05
    for k, v in b.items():
        assert v.dtype == torch.float32 and v.is_contiguous(), k
        if not k.startswith("flow"):
            assert v.min() >= 0.0 and v.max() <= 1.0, k
    torch.testing.assert_close(b["input"], b["frames"][:, 1], rtol=0, atol=0)
    torch.testing.assert_close(b["transmission"], b["transmission_all"][:, 1], rtol=0, atol=0)


def test_same_seed_and_step_same_batch_otherwise_not(photos_u8):
    a = DeviceSynthesizer(photos_u8, "cpu", size=32, seed=5)
    b = DeviceSynthesizer(photos_u8, "cpu", size=32, seed=5)
    first, again = a.batch(7, 4), b.batch(7, 4)
    for k in KEYS:
        assert torch.equal(first[k], again[k]), k
    assert not torch.equal(first["frames"], a.batch(8, 4)["frames"])
    assert not torch.equal(first["frames"], a.batch(7, 4, part=1)["frames"])
    assert not torch.equal(first["frames"], DeviceSynthesizer(photos_u8, "cpu", size=32, seed=6).batch(7, 4)["frames"])
    assert step_seed(0, 1) != step_seed(1, 0) and 0 <= step_seed(3, 4) < 2**63


def test_frames_are_transmission_plus_reflection(photos_u8):
    syn = DeviceSynthesizer(photos_u8, "cpu", size=48, seed=3)
    clean = syn.batch(0, 4, noise=False)
    torch.testing.assert_close(clean["frames"], clean["transmission_all"] + clean["reflection_all"], rtol=0, atol=2e-6)
    assert clean["reflection"].mean() > 0.005
    quiet = DeviceSynthesizer(photos_u8, "cpu", size=48, seed=3, config=SynthConfig(**NO_NOISE)).batch(0, 4)
    torch.testing.assert_close(quiet["frames"], clean["frames"], rtol=0, atol=0)
    noisy = DeviceSynthesizer(
        photos_u8, "cpu", size=48, seed=3, config=SynthConfig(shot_noise=(1e-3, 1e-3), read_noise=(2e-3, 2e-3))
    ).batch(0, 4)
    residual = noisy["frames"] - noisy["transmission_all"] - noisy["reflection_all"]
    assert 1e-3 < residual.abs().mean() < 0.03 and abs(residual.mean()) < 4e-3


def test_glass_gain_follows_the_real_pairs_fit(photos_u8):
    """With glass_in_label=False the label is the scene without the glass, so label and frames
    differ by the per-channel glass gain g (synth.glass_gain): linear ratios are one constant per
    sample and channel, and their overall level has the fitted median (0.95) and spread."""
    cfg = SynthConfig(glass_in_label=False, **NO_NOISE)
    without = DeviceSynthesizer(photos_u8, "cpu", size=32, seed=9, config=cfg).batch(0, 400)
    with_glass = DeviceSynthesizer(photos_u8, "cpu", size=32, seed=9, config=SynthConfig(**NO_NOISE)).batch(0, 400)
    scene, seen = srgb_to_linear(without["transmission"]), srgb_to_linear(with_glass["transmission"])
    ok = (scene > 0.05) & (seen < 0.99)
    ratio = torch.where(ok, seen / scene.clamp_min(1e-6), torch.nan)
    gain = ratio.nanmedian(dim=-1).values.nanmedian(dim=-1).values  # (B,3)
    spread = (ratio - gain[..., None, None]).abs().nan_to_num(0.0).amax((-1, -2))
    assert (spread[gain.isfinite()] < 1e-3).all()
    overall = gain.log().mean(1).exp()
    overall = overall[overall.isfinite()].numpy()
    assert abs(np.median(overall) - 0.95) < 0.03
    assert 0.55 < np.quantile(overall, 0.1) < 0.75 and 1.0 < np.quantile(overall, 0.9) < 1.09
    assert not torch.equal(without["frames"], without["transmission_all"] + without["reflection_all"])


def _warp_error(layers: torch.Tensor, flows: torch.Tensor, middle: int) -> torch.Tensor:
    """(B,N) mean |warp(layer_i, flow_i) - layer_mid| where the source lies inside frame i
    (eroded by 2 px: bilinear sampling at the edge mixes in the zero padding)."""
    b, n = layers.shape[:2]
    out, mask = warp(layers.flatten(0, 1), flows.flatten(0, 1), return_mask=True)
    mask = -torch.nn.functional.max_pool2d(-mask, 5, 1, 2)
    ref = layers[:, middle : middle + 1].expand_as(layers).flatten(0, 1)
    err = ((out - ref).abs() * mask).sum((1, 2, 3)) / (3 * mask.sum((1, 2, 3)))
    return err.view(b, n)


def test_transmission_flows_reproduce_the_middle_frame(photos_u8):
    """On photos smoothed down to what bilinear resampling reproduces, a flow off by half a pixel
    shows; the true flows reproduce the middle T to well under that."""
    smooth = [np.round(gaussian_filter(p.astype(np.float32), sigma=(2.0, 2.0, 0.0))).astype(np.uint8) for p in photos_u8]
    b = DeviceSynthesizer(smooth, "cpu", size=96, seed=4).batch(0, 4, noise=False)
    good = _warp_error(b["transmission_all"], b["flow_T"], 2)
    half_px = _warp_error(b["transmission_all"], b["flow_T"] + 0.5, 2)
    others = [0, 1, 3, 4]
    assert (good[:, others] < 0.004).all(), good
    assert (good[:, others] < 0.3 * half_px[:, others]).all(), (good, half_px)


def test_reflection_flows_reproduce_the_middle_reflection():
    """On a flat T (the stored R is then a function of R alone), one blur sigma for all frames,
    ghosting always on, R smoothed down to what bilinear resampling reproduces: flow_R reproduces
    the middle R, flow_R off by half a pixel and flow_T do not."""
    flat = np.full((120, 160, 3), 102, np.uint8)
    photo = gaussian_filter(load_photos(None, max_side=192)[0] * 255.0, sigma=(2.0, 2.0, 0.0))
    cfg = SynthConfig(blur_jitter=0.0, ghost_prob=1.0, **NO_NOISE)
    b = DeviceSynthesizer([flat, np.round(photo).astype(np.uint8)], "cpu", size=96, seed=7, config=cfg, augment=False).batch(0, 6)
    t = b["transmission_all"]
    flat_t = (t.amax(dim=(1, 3, 4)) - t.amin(dim=(1, 3, 4))).amax(1) < 1e-5  # flat per channel (the glass tints it)
    assert flat_t.sum() >= 2
    r, flow = b["reflection_all"][flat_t], b["flow_R"][flat_t]
    good = _warp_error(r, flow, 2)[:, [0, 1, 3, 4]]
    half_px = _warp_error(r, flow + 0.5, 2)[:, [0, 1, 3, 4]]
    wrong = _warp_error(r, b["flow_T"][flat_t], 2)[:, [0, 1, 3, 4]]
    assert (good < 0.003).all(), good
    assert (good < 0.3 * half_px).all() and (good < 0.25 * wrong).all(), (good, half_px, wrong)


def test_channels_last_is_the_same_data(photos_u8):
    plain = DeviceSynthesizer(photos_u8, "cpu", size=32, seed=2).batch(3, 2)
    cl = DeviceSynthesizer(photos_u8, "cpu", size=32, seed=2, channels_last=True).batch(3, 2)
    for k in KEYS:
        assert torch.equal(plain[k], cl[k]), k
    assert cl["input"].is_contiguous(memory_format=torch.channels_last)
    assert cl["frames"].flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_bf16_blur_stays_close(photos_u8):
    f32 = DeviceSynthesizer(photos_u8, "cpu", size=32, seed=2, half_blur=False).batch(1, 2)
    bf16 = DeviceSynthesizer(photos_u8, "cpu", size=32, seed=2, half_blur=True).batch(1, 2)
    assert (f32["reflection"] - bf16["reflection"]).abs().max() < 0.02
    assert torch.equal(f32["transmission"], bf16["transmission"])


def test_photos_of_any_size_and_kind(photos_u8):
    big = np.repeat(np.repeat(photos_u8[0], 4, axis=0), 4, axis=1)  # needs shrink levels to sample without aliasing
    grey = photos_u8[5][:, :, 0]
    as_float = photos_u8[1].astype(np.float32) / 255.0
    syn = DeviceSynthesizer([big, grey, as_float, photos_u8[2][:20, :30]], "cpu", size=32)
    assert syn.photos.levels >= 4 and syn.memory_bytes > 4 * big.shape[0] * big.shape[1]
    b = syn.batch(0, 8)
    assert torch.isfinite(b["frames"]).all() and b["frames"].max() <= 1.0


def test_bad_arguments_are_refused(photos_u8):
    with pytest.raises(UsageError, match="odd"):
        DeviceSynthesizer(photos_u8, "cpu", n_frames=4)
    with pytest.raises(UsageError, match="size"):
        DeviceSynthesizer(photos_u8, "cpu", size=8)
    with pytest.raises(DereflectError, match="no photos"):
        DeviceSynthesizer([], "cpu")
    with pytest.raises(DereflectError, match="too small"):
        DeviceSynthesizer([np.zeros((4, 40, 3), np.uint8)], "cpu")
    with pytest.raises(DereflectError, match="shape"):
        DeviceSynthesizer([np.zeros((32, 32, 5), np.uint8)], "cpu")
    with pytest.raises(UsageError, match="batch_size"):
        DeviceSynthesizer(photos_u8, "cpu", size=32).batch(0, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_the_cpu_recipe(photos_u8):
    """CUDA draws its own (deterministic) stream: compare distributions, not values."""
    cpu = _stats(DeviceSynthesizer(photos_u8, "cpu", size=64, seed=1).batch(0, 200))
    syn = DeviceSynthesizer(photos_u8, "cuda", size=64, seed=1)
    a, b = syn.batch(0, 200), syn.batch(0, 200)
    assert all(torch.equal(a[k], b[k]) for k in KEYS)
    (_, c), (_, d) = list(syn.batches(0, 2, 200))  # side-stream prefetch: the same batches
    assert all(torch.equal(a[k], c[k]) for k in KEYS) and not torch.equal(c["frames"], d["frames"])
    torch.cuda.set_sync_debug_mode("error")  # a batch never waits for the GPU (no .item(), no host copies)
    try:
        syn.batch(1, 8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    gpu = _stats({k: v.float().cpu() for k, v in a.items()})
    for k in cpu:
        assert ks_2samp(cpu[k], gpu[k]).statistic < 0.22, k  # alpha ~ 1e-4 for 200 vs 200


def test_batches_iterates_the_same_batches(photos_u8):
    syn = DeviceSynthesizer(photos_u8, "cpu", size=24, seed=4)
    got = list(syn.batches(3, 5, 2, part=1))
    assert [s for s, _ in got] == [3, 4]
    for s, b in got:
        want = syn.batch(s, 2, part=1)
        assert all(torch.equal(b[k], want[k]) for k in KEYS)


def test_batches_feed_the_real_trainers(photos_u8, tmp_path):
    """The dict is what TeacherTrainer.train_step and StudentTrainer.train_step (with KT, so the
    teacher reads `frames`) consume: one step each, finite losses, no DataLoader involved."""
    from dereflect.models import create_model, save_checkpoint
    from dereflect.train.config import load_config
    from dereflect.train.student import StudentTrainer
    from dereflect.train.teacher import TeacherTrainer

    common = dict(batch=2, size=32, steps=2, val_samples=1, workers=0, perceptual="off")
    syn = DeviceSynthesizer(photos_u8, "cpu", size=32, seed=0)
    teacher = TeacherTrainer(
        load_config("teacher", None, dict(model="teacher-small", **common)), tmp_path / "t", device="cpu", progress=False
    )
    logs = teacher.train_step(syn.batch(0, 2), 0)
    assert np.isfinite(logs["total"]) and {"flow", "layers"} <= logs.keys()
    ckpt = save_checkpoint(create_model("teacher-small"), tmp_path / "teacher.safetensors")
    student = StudentTrainer(
        load_config("student", None, dict(model="student-nano", real_fraction=0.0, **common)),
        tmp_path / "s",
        teacher=ckpt,
        device="cpu",
        progress=False,
    )
    logs = student.train_step(syn.batch(1, 2), 1)
    assert np.isfinite(logs["total"]) and "kt" in logs and logs["real"] == 0.0
