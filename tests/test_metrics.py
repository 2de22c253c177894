"""The metrics follow the literature's protocol: checked against scikit-image and plain loops."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dereflect import metrics


def _skimage_ssim(gt: np.ndarray, est: np.ndarray) -> float:
    """Per channel with scikit-image's defaults, then averaged (the protocol)."""
    return float(np.mean([structural_similarity(gt[..., c], est[..., c], data_range=255) for c in range(gt.shape[2])]))


def _skimage_psnr(gt: np.ndarray, est: np.ndarray) -> float:
    return float(np.mean([peak_signal_noise_ratio(gt[..., c], est[..., c], data_range=255) for c in range(gt.shape[2])]))


def _lmse_loop(gt: np.ndarray, est: np.ndarray, window: int = 20, shift: int = 10) -> float:
    """Reference LMSE: the loop from Grosse et al.'s MIT intrinsic-images code, per channel."""
    gt = gt.astype(np.float64)
    est = est.astype(np.float64)
    h, w, c = gt.shape
    ssq = total = 0.0
    for ch in range(c):
        for i in range(0, h - window + 1, shift):
            for j in range(0, w - window + 1, shift):
                g = gt[i : i + window, j : j + window, ch]
                e = est[i : i + window, j : j + window, ch]
                alpha = np.sum(g * e) / np.sum(e**2) if np.sum(e**2) > 1e-5 else 0.0
                ssq += np.sum((g - alpha * e) ** 2)
                total += np.sum(g**2)
    return ssq / total


def _ncc_plain(gt: np.ndarray, est: np.ndarray) -> float:
    x, y = gt.astype(np.float64), est.astype(np.float64)
    return float(np.mean((x - x.mean()) * (y - y.mean())) / (x.std() * y.std()))


@pytest.fixture(scope="module")
def degraded(photo: np.ndarray) -> np.ndarray:
    """The photo seen through glass: a blurred, flipped copy added on top, plus noise."""
    rng = np.random.default_rng(1)
    reflection = np.asarray(Image.fromarray(photo[:, ::-1]).resize((64, 64)).resize((512, 512)), np.float64)
    out = 0.8 * photo + 0.35 * reflection + rng.normal(0, 3, photo.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _random_pair(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, shape, dtype=np.uint8)
    est = np.clip(gt.astype(int) + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
    return gt, est


@pytest.mark.parametrize("shape", [(64, 80, 3), (37, 53, 3), (7, 7, 3), (200, 31, 3)])
def test_ssim_and_psnr_match_scikit_image_on_random_images(shape: tuple[int, ...]) -> None:
    gt, est = _random_pair(shape)
    assert metrics.ssim(gt, est) == pytest.approx(_skimage_ssim(gt, est), abs=1e-6)
    assert metrics.psnr(gt, est) == pytest.approx(_skimage_psnr(gt, est), abs=1e-6)
    per_channel = metrics.ssim_per_channel(gt, est)
    for c in range(3):
        assert per_channel[c] == pytest.approx(structural_similarity(gt[..., c], est[..., c], data_range=255), abs=1e-6)


def test_ssim_and_psnr_match_scikit_image_on_a_photo(photo: np.ndarray, degraded: np.ndarray) -> None:
    ref = _skimage_ssim(photo, degraded)
    assert 0.3 < ref < 0.95  # a real degradation, not a trivial pair
    assert metrics.ssim(photo, degraded) == pytest.approx(ref, abs=1e-6)
    assert metrics.psnr(photo, degraded) == pytest.approx(_skimage_psnr(photo, degraded), abs=1e-6)


def test_float_input_in_0_255_takes_the_same_protocol(photo: np.ndarray, degraded: np.ndarray) -> None:
    gt = photo.astype(np.float32) + 0.25  # not integer-valued: the float64 path
    est = degraded.astype(np.float64)
    ref = float(np.mean([structural_similarity(gt[..., c].astype(np.float64), est[..., c], data_range=255) for c in range(3)]))
    assert metrics.ssim(gt, est) == pytest.approx(ref, abs=1e-6)
    assert metrics.ssim(photo.astype(np.float64), est) == pytest.approx(metrics.ssim(photo, degraded), abs=1e-9)


def test_band_splitting_does_not_change_results(monkeypatch: pytest.MonkeyPatch, photo: np.ndarray, degraded: np.ndarray) -> None:
    gt, est = photo[:301, :203], degraded[:301, :203]
    expected = (_skimage_ssim(gt, est), _skimage_psnr(gt, est), _lmse_loop(gt, est), _ncc_plain(gt, est))
    monkeypatch.setattr(metrics, "BAND_ELEMS", 5000)  # many bands and a ragged last one
    monkeypatch.setattr(metrics, "SSIM_MIN_BAND_ROWS", 5)
    got = (metrics.ssim(gt, est), metrics.psnr(gt, est), metrics.lmse(gt, est), metrics.ncc(gt, est))
    assert got == pytest.approx(expected, abs=1e-9)


def test_grey_images_are_scored_as_one_channel(photo: np.ndarray, degraded: np.ndarray) -> None:
    gt, est = photo[..., 1], degraded[..., 1]
    assert metrics.ssim(gt, est) == pytest.approx(structural_similarity(gt, est, data_range=255), abs=1e-6)
    assert metrics.psnr(gt, est) == pytest.approx(peak_signal_noise_ratio(gt, est, data_range=255), abs=1e-9)
    assert metrics.lmse(gt, est) == pytest.approx(_lmse_loop(gt[..., None], est[..., None]), abs=1e-9)


def test_real_pair_from_shared_data(shared_data: Path) -> None:
    folder = shared_data / "real_pairs_locationaware"
    if not (folder / "transmission" / "000001.png").exists():
        pytest.skip("real_pairs_locationaware/000001 not present")
    gt = np.asarray(Image.open(folder / "transmission" / "000001.png").convert("RGB"))
    est = np.asarray(Image.open(folder / "blended" / "000001.png").convert("RGB"))
    assert metrics.ssim(gt, est) == pytest.approx(_skimage_ssim(gt, est), abs=1e-6)
    assert metrics.psnr(gt, est) == pytest.approx(_skimage_psnr(gt, est), abs=1e-6)
    crop = (slice(100, 213), slice(50, 187))  # the loop reference is slow at full size
    assert metrics.lmse(gt[crop], est[crop]) == pytest.approx(_lmse_loop(gt[crop], est[crop]), abs=1e-9)


@pytest.mark.parametrize("dy, dx", [(0, 0), (3, -5), (-10, 1)])
def test_gt_shift_measures_a_known_translation(photo: np.ndarray, degraded: np.ndarray, dy: int, dx: int) -> None:
    # The "photo" is a degraded copy (noise, blur, haze), the ground truth a moved crop of the original.
    crop = (slice(40, 296), slice(60, 380))
    moved = photo[crop[0].start + dy : crop[0].stop + dy, crop[1].start + dx : crop[1].stop + dx]
    assert metrics.gt_shift(moved, degraded[crop]) == pytest.approx(math.hypot(dy, dx), abs=0.3)


def test_misaligned_pairs_reward_blur_the_reason_for_aligned_means(shared_data: Path) -> None:
    """On locationaware/000006 (GT 10 px off) a blurred photo "beats" the photo in LMSE; on 000001 it loses."""
    from scipy.ndimage import gaussian_filter

    folder = shared_data / "real_pairs_locationaware"
    if not (folder / "transmission" / "000006.png").exists():
        pytest.skip("real_pairs_locationaware not present")
    for name, aligned in (("000001", True), ("000006", False)):
        gt, photo = (np.asarray(Image.open(folder / d / f"{name}.png").convert("RGB")) for d in ("transmission", "blended"))
        assert (metrics.gt_shift(gt, photo) <= metrics.ALIGNED_MAX_SHIFT) == aligned
        blurred = gaussian_filter(photo.astype(np.float64), (2, 2, 0))
        assert (metrics.lmse(gt, blurred) > metrics.lmse(gt, photo)) == aligned


@pytest.mark.parametrize("shape", [(20, 20, 3), (57, 83, 3), (100, 40, 3), (29, 41, 3)])
def test_lmse_matches_the_plain_loop(shape: tuple[int, ...]) -> None:
    gt, est = _random_pair(shape, seed=3)
    est[:10, :10] = 0  # a window with (nearly) no estimate energy: alpha = 0 there
    assert metrics.lmse(gt, est) == pytest.approx(_lmse_loop(gt, est), abs=1e-9)


def test_lmse_matches_the_plain_loop_on_a_photo(photo: np.ndarray, degraded: np.ndarray) -> None:
    gt, est = photo[::2, ::2], degraded[::2, ::2]
    assert metrics.lmse(gt, est) == pytest.approx(_lmse_loop(gt, est), abs=1e-9)


def test_lmse_properties(photo: np.ndarray, degraded: np.ndarray) -> None:
    assert metrics.lmse(photo, photo) == 0.0
    assert metrics.lmse(photo, np.zeros_like(photo)) == pytest.approx(1.0, abs=1e-12)
    base = metrics.lmse(photo, degraded)
    assert 0.0 < base < 1.0
    for scale in (0.37, 2.5):
        assert metrics.lmse(photo, degraded * scale) == pytest.approx(base, rel=1e-9)
    assert metrics.lmse(np.zeros_like(photo), np.zeros_like(photo)) == 0.0


def test_identical_images(photo: np.ndarray) -> None:
    assert metrics.ssim(photo, photo) == pytest.approx(1.0, abs=1e-12)
    assert metrics.psnr(photo, photo) == math.inf
    assert metrics.ncc(photo, photo) == pytest.approx(1.0, abs=1e-12)


def test_ncc_is_global_and_matches_the_plain_formula(photo: np.ndarray, degraded: np.ndarray) -> None:
    assert metrics.ncc(photo, degraded) == pytest.approx(_ncc_plain(photo, degraded), abs=1e-9)
    assert metrics.ncc(photo, 255 - photo.astype(np.float64)) == pytest.approx(-1.0, abs=1e-9)
    assert math.isnan(metrics.ncc(photo, np.full_like(photo, 7)))


def test_score_returns_all_four(photo: np.ndarray, degraded: np.ndarray) -> None:
    s = metrics.score(photo, degraded)
    assert set(s) == {"psnr", "ssim", "lmse", "ncc"}
    assert s["ssim"] == metrics.ssim(photo, degraded) and s["lmse"] == metrics.lmse(photo, degraded)


@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim, metrics.lmse, metrics.ncc, metrics.score])
def test_mismatched_shapes_name_both(fn) -> None:
    with pytest.raises(ValueError, match=r"\(32, 40, 3\).*\(32, 41, 3\)"):
        fn(np.zeros((32, 40, 3), np.uint8), np.zeros((32, 41, 3), np.uint8))


def test_too_small_images_are_refused() -> None:
    tiny = np.zeros((6, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 7x7"):
        metrics.ssim(tiny, tiny)
    small = np.zeros((19, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 20x20"):
        metrics.lmse(small, small)


torch = pytest.importorskip("torch")


def _nchw(img: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[None] / 255.0)).to(dtype)


def test_torch_ssim_equals_numpy_ssim(photo: np.ndarray, degraded: np.ndarray) -> None:
    expected = metrics.ssim(photo, degraded)
    got32 = metrics.ssim_torch(_nchw(photo, torch.float32), _nchw(degraded, torch.float32))
    assert got32.dtype == torch.float32 and got32.dim() == 0
    assert float(got32) == pytest.approx(expected, abs=1e-5)
    got64 = metrics.ssim_torch(_nchw(photo, torch.float64), _nchw(degraded, torch.float64))
    assert float(got64) == pytest.approx(expected, abs=1e-10)


def test_torch_ssim_reductions_and_batch(photo: np.ndarray, degraded: np.ndarray) -> None:
    gt, est = photo[:96, :128], degraded[:96, :128]
    x = torch.cat([_nchw(gt, torch.float64), _nchw(gt, torch.float64)])
    y = torch.cat([_nchw(est, torch.float64), _nchw(gt, torch.float64)])
    per_image = metrics.ssim_torch(x, y, reduction="none")
    assert per_image.shape == (2,)
    assert float(per_image[0]) == pytest.approx(metrics.ssim(gt, est), abs=1e-10)
    assert float(per_image[1]) == pytest.approx(1.0, abs=1e-12)
    assert float(metrics.ssim_torch(x, y, reduction="sum")) == pytest.approx(float(per_image.sum()), abs=1e-12)
    assert float(metrics.ssim_torch(x, y)) == pytest.approx(float(per_image.mean()), abs=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        metrics.ssim_torch(x, y, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(2, 3, 96, 128\).*\(1, 3, 96, 128\)"):
        metrics.ssim_torch(x, y[:1])


def test_torch_ssim_has_correct_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 9, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 2, 9, 10, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: metrics.ssim_torch(a, y), (x,))
    loss = 1 - metrics.ssim_torch(x.float(), y.float())
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
