"""Loss terms: zero on ideal inputs, positive otherwise, values checked against the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data, filters, transform

from dereflect.errors import DereflectError
from dereflect.models.blocks import resize_flow
from dereflect.models.vgg import DEFAULT_LAYERS
from dereflect.train import losses
from dereflect.train.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    distillation_loss,
    exclusion_loss,
    feature_decoupling_loss,
    flow_loss,
    gan_loss,
    reconstruction_loss,
    view_synthesis_loss,
)


def _photo(name: str, size: int = 96) -> torch.Tensor:
    img = getattr(data, name)()
    side = min(img.shape[:2])
    img = transform.resize(img[:side, :side], (size, size), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).contiguous()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- L_R ---------------------------------------------------------------------------------------------


def test_reconstruction_loss_matches_numpy_reference() -> None:
    pred = torch.rand(2, 3, 9, 11, generator=_gen(0), requires_grad=True)
    target = torch.rand(2, 3, 9, 11, generator=_gen(1))
    p, t = pred.detach().numpy(), target.numpy()
    expected = (
        np.abs(p - t).mean()
        + 0.5 * np.abs(np.diff(p, axis=-1) - np.diff(t, axis=-1)).mean()
        + 0.5 * np.abs(np.diff(p, axis=-2) - np.diff(t, axis=-2)).mean()
    )
    loss = reconstruction_loss(pred, target, grad_weight=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert reconstruction_loss(target, target).item() == 0.0
    # A constant offset changes no gradient: only the L1 part remains.
    assert reconstruction_loss(target + 0.1, target).item() == pytest.approx(0.1, rel=1e-5)


# --- L_P ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def perceptual() -> PerceptualLoss:
    try:
        return PerceptualLoss()
    except DereflectError as exc:
        pytest.skip(f"no pretrained VGG weights here: {exc}")


def test_perceptual_loss_orders_degradations(perceptual: PerceptualLoss) -> None:
    img = _photo("astronaut")
    blurred = torch.from_numpy(filters.gaussian(img[0].permute(1, 2, 0).numpy(), sigma=2, channel_axis=-1).astype(np.float32)).permute(
        2, 0, 1
    )[None]
    noisy = (img + 0.01 * torch.randn(img.shape, generator=_gen(2))).clamp(0, 1)
    assert perceptual(img, img).item() == 0.0
    small, large = perceptual(noisy, img).item(), perceptual(blurred, img).item()
    assert 0.0 < small < large / 3, (small, large)
    pred = blurred.clone().requires_grad_(True)
    perceptual(pred, img).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in perceptual.parameters())
    expected = losses.VGG19_LAYER_WEIGHTS if perceptual.vgg.source == "torchvision" else losses.HED_LAYER_WEIGHTS
    assert perceptual.weights == expected


# --- L_FD ---------------------------------------------------------------------------------------------


def _zhang_exclusion_reference(t: np.ndarray, r: np.ndarray) -> float:
    """Zhang et al.'s compute_exclusion_loss for one level, one image (NCHW), transcribed to numpy."""
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    total = 0.0
    for axis in (-1, -2):
        g1, g2 = np.diff(t, axis=axis), np.diff(r, axis=axis)
        alpha = 2.0 * np.abs(g1).mean() / np.abs(g2).mean()
        s1, s2 = sigmoid(g1) * 2 - 1, sigmoid(g2 * alpha) * 2 - 1
        total += np.mean(s1**2 * s2**2) ** 0.25
    return total


def test_exclusion_loss_matches_zhang_and_separates_layers() -> None:
    t, r_independent = _photo("astronaut", 64), _photo("coffee", 64)
    reference = _zhang_exclusion_reference(t.numpy(), r_independent.numpy())
    assert exclusion_loss(t, r_independent, levels=1).item() == pytest.approx(reference, rel=1e-4)

    r_correlated = 0.3 * t + 0.05 * r_independent  # a reflection that shares T's edges
    independent = exclusion_loss(t, r_independent).item()
    correlated = exclusion_loss(t, r_correlated).item()
    assert correlated > 1.3 * independent > 0, (correlated, independent)

    flat = torch.full_like(t, 0.3, requires_grad=True)
    tt = t.clone().requires_grad_(True)
    ideal = exclusion_loss(tt, flat)
    assert ideal.item() < 1e-2
    ideal.backward()
    assert torch.isfinite(tt.grad).all() and torch.isfinite(flat.grad).all()


def test_feature_decoupling_loss_is_squared_cosine() -> None:
    a = torch.zeros(1, 4, 3, 3)
    a[:, 0] = 2.0
    b = torch.zeros(1, 4, 3, 3)
    b[:, 1] = 5.0
    assert feature_decoupling_loss([a], [b]).item() == 0.0  # orthogonal at every pixel
    assert feature_decoupling_loss(a, -a).item() == pytest.approx(1.0)  # anti-parallel: just as entangled
    # Half the pixels parallel (cos^2 = 1), half orthogonal (0); second scale identical -> mean(0.5, 1.0)
    half = torch.cat([a[..., :1], b[..., :1]], dim=-1)  # (1,4,3,2): column 0 like a, column 1 like b
    assert feature_decoupling_loss([a[..., :2], a], [half, a]).item() == pytest.approx(0.75)
    psi_t = torch.randn(2, 64, 8, 8, generator=_gen(3), requires_grad=True)
    random_pairs = feature_decoupling_loss(psi_t, torch.randn(2, 64, 8, 8, generator=_gen(4)))
    assert random_pairs.item() == pytest.approx(1 / 64, rel=0.3)  # E[cos^2] of random vectors = 1/C
    random_pairs.backward()
    assert psi_t.grad.abs().sum() > 0


# --- L_VS ---------------------------------------------------------------------------------------------


def _translating_sequence() -> tuple[torch.Tensor, ...]:
    """T and R each translate by integer steps; frame i's layers are the middle layers rolled by its shift."""
    t_mid, r_mid = _photo("astronaut", 48) * 0.7, _photo("coffee", 48) * 0.3
    shifts_t = [(-2, 1), (0, 0), (3, -1)]  # (dy, dx) per frame, middle frame = index 1
    shifts_r = [(1, 4), (0, 0), (-2, -3)]
    t_layers = torch.stack([torch.roll(t_mid, s, dims=(-2, -1)) for s in shifts_t], dim=1)
    r_layers = torch.stack([torch.roll(r_mid, s, dims=(-2, -1)) for s in shifts_r], dim=1)

    def flows(shifts: list[tuple[int, int]]) -> torch.Tensor:
        # roll by s: layer_i(q) = layer_mid(q - s), so warp(layer_i, flow)(p) = layer_i(p + flow) needs flow = s
        return torch.stack([torch.tensor([dx, dy], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 48, 48)
                            for dy, dx in shifts], dim=1)  # fmt: skip

    return t_mid + r_mid, t_layers, r_layers, flows(shifts_t), flows(shifts_r)


def test_view_synthesis_loss_vanishes_with_true_flows() -> None:
    middle, t_layers, r_layers, flows_t, flows_r = _translating_sequence()
    t_layers.requires_grad_(True)
    true = view_synthesis_loss(middle, t_layers, r_layers, flows_t, flows_r, mid_index=1)
    assert true.item() < 1e-5
    zero = view_synthesis_loss(middle, t_layers, r_layers, torch.zeros_like(flows_t), torch.zeros_like(flows_r), 1)
    assert zero.item() > 0.02
    swapped = view_synthesis_loss(middle, t_layers, r_layers, flows_r, flows_t, 1)  # layers on the wrong paths
    assert swapped.item() > 0.02
    zero.backward()
    assert t_layers.grad[:, 0].abs().sum() > 0 and t_layers.grad[:, 1].abs().sum() == 0  # middle frame not used
    with pytest.raises(ValueError, match="flows_t"):
        view_synthesis_loss(middle, t_layers, r_layers, flows_t[:, :2], flows_r, 1)


# --- flow ---------------------------------------------------------------------------------------------


def test_flow_loss_is_multiscale_endpoint_error() -> None:
    true = torch.randn(2, 3, 2, 32, 40, generator=_gen(5)) * 3
    pyramid = [true, resize_flow(true.flatten(0, 1), (16, 20)).view(2, 3, 2, 16, 20)]
    assert flow_loss(pyramid, true).item() == 0.0
    offset = torch.tensor([3.0, 4.0]).view(1, 1, 2, 1, 1)
    # EPE 5 at full res; at half res the vectors are halved, so the same offset costs 5 too (weights 1, 0.5)
    off = flow_loss([true + offset, pyramid[1] + offset], true, weights=[1.0, 0.5])
    assert off.item() == pytest.approx(5.0 + 0.5 * 5.0, rel=1e-5)
    constant = torch.zeros(1, 1, 2, 8, 8)
    constant[:, :, 0] = 4.0  # 4 px to the right at full res = 2 px at half res
    pred = torch.zeros(1, 1, 2, 4, 4, requires_grad=True)
    loss = flow_loss([pred], constant)
    assert loss.item() == pytest.approx(2.0, rel=1e-5)
    loss.backward()
    assert pred.grad[0, 0, 0].mean() < 0  # gradient pushes dx up towards the true flow


# --- GAN ---------------------------------------------------------------------------------------------


def test_patch_discriminator_shapes_and_gradients() -> None:
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    for sn in (False, True):
        disc = PatchDiscriminator(width=16, n_layers=3, spectral_norm=sn)
        out = disc(x)
        assert out.shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 (stride 2), -> 7 -> 6 (stride 1, k4 p1)
        gan_loss("hinge", out, -out, for_discriminator=True).backward()
        assert all(p.grad is not None for p in disc.parameters() if p.requires_grad)
    assert x.grad.abs().sum() > 0


def test_hinge_loss_values() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.5])
    # D: mean(relu(1-real)) + mean(relu(1+fake)) = (0 + 0.5)/2 + (0 + 1.5)/2
    assert gan_loss("hinge", real, fake, True).item() == pytest.approx(0.25 + 0.75)
    assert gan_loss("hinge", real, fake, False).item() == pytest.approx(1.25)  # -mean(fake)


def test_relativistic_loss_values() -> None:
    real, fake = torch.tensor([2.0, 1.0]), torch.tensor([-1.0, 0.0])
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731  BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
    real_rel = [2.0 - (-0.5), 1.0 - (-0.5)]
    fake_rel = [-1.0 - 1.5, 0.0 - 1.5]
    d_expected = 0.5 * (np.mean([softplus(-v) for v in real_rel]) + np.mean([softplus(v) for v in fake_rel]))
    g_expected = 0.5 * (np.mean([softplus(v) for v in real_rel]) + np.mean([softplus(-v) for v in fake_rel]))
    d_loss = gan_loss("relativistic", real, fake, True).item()
    g_loss = gan_loss("relativistic", real, fake, False).item()
    assert d_loss == pytest.approx(d_expected, rel=1e-6) and g_loss == pytest.approx(g_expected, rel=1e-6)
    assert d_loss < math.log(2) < g_loss  # D is winning here; at equal logits both are log 2
    same = torch.zeros(3)
    assert gan_loss("relativistic", same, same, False).item() == pytest.approx(math.log(2))
    fake_logits = fake.clone().requires_grad_(True)
    gan_loss("relativistic", real, fake_logits, False).backward()
    assert (fake_logits.grad < 0).all()  # G raises the fake logits
    with pytest.raises(ValueError, match="unknown GAN loss 'lsgan'"):
        gan_loss("lsgan", real, fake, True)


# --- L_T ---------------------------------------------------------------------------------------------


def test_distillation_loss_standardises_channels() -> None:
    teacher = [torch.randn(2, 8, 16, 16, generator=_gen(6)), torch.randn(2, 8, 8, 8, generator=_gen(7))]
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-5)
    # Invariant to a per-channel positive scale and shift (the projection's job), not to content.
    scaled = [3.0 * t + 1.0 for t in teacher]
    assert distillation_loss(scaled, teacher).item() == pytest.approx(0.0, abs=1e-4)
    student = [torch.randn(t.shape, generator=_gen(10 + i), requires_grad=True) for i, t in enumerate(teacher)]
    teacher_leaf = [t.clone().requires_grad_(True) for t in teacher]
    loss = distillation_loss(student, teacher_leaf)
    assert loss.item() > 0.5  # E|a-b| for independent unit normals is 2/sqrt(pi) = 1.13
    loss.backward()
    assert all(s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher_leaf)  # the frozen teacher gets no gradient
    with pytest.raises(ValueError, match="differ"):
        distillation_loss([teacher[0]], [teacher[1]])


def test_structure_loss_is_one_minus_the_benchmark_ssim() -> None:
    from dereflect.metrics import ssim
    from dereflect.train.losses import structure_loss

    rng = np.random.default_rng(3)
    gt = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    est = np.clip(gt.astype(int) + rng.integers(-30, 31, gt.shape), 0, 255).astype(np.uint8)
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    assert float(structure_loss(to_t(est), to_t(gt))) == pytest.approx(1 - ssim(gt, est), abs=1e-4)
    assert float(structure_loss(to_t(gt), to_t(gt))) == pytest.approx(0.0, abs=1e-6)


def test_perceptual_loss_on_the_first_layers_only(perceptual: PerceptualLoss) -> None:
    three = PerceptualLoss(source=perceptual.vgg.source, layers=DEFAULT_LAYERS[:3])
    assert three.weights == perceptual.weights[:3]
    with pytest.raises(ValueError, match="first n defaults"):
        PerceptualLoss(source=perceptual.vgg.source, layers=("relu2_2", "relu3_2"))
