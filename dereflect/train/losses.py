"""Loss terms of the teacher and the student, as plain functions and modules.

L_teacher = a*L_R + b*L_P + c*L_FD + d*L_VS
L_student = a*L_R + b*L_P + c*(L_G + L_D) + d*L_T
Weights a..d come from the trainer's config; every term here is unweighted and batch-size independent
(means, not sums). Images are NCHW float in [0,1]; flows are pixels on the middle frame's grid
(see dereflect.models.blocks.warp).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dereflect.models.blocks import resize_flow, warp
from dereflect.models.vgg import DEFAULT_LAYERS, VGGFeatures

# ERRNet / Zhang et al. weights for VGG19 relu1_2 .. relu5_2.
VGG19_LAYER_WEIGHTS: tuple[float, ...] = (1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5)
# The same recipe for HED's VGG16 (same layer names): 1 / the layer's mean activation, measured on
# Kodak24 (19.1, 4.3, 6.5, 2.5, 0.85: HED takes 0-255 input, so its activations are ~50x larger), and
# 10x on relu5_2 as ERRNet does. This keeps each layer's contribution comparable.
HED_LAYER_WEIGHTS: tuple[float, ...] = (1 / 19.0, 1 / 4.3, 1 / 6.5, 1 / 2.5, 10 / 0.85)

_EPS = 1e-8


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along x (width) and y (height): shapes (..., H, W-1) and (..., H-1, W)."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, grad_weight: float = 1.0) -> torch.Tensor:
    """L_R: L1 of the image plus `grad_weight` x L1 of its x and y gradients (keeps edges sharp)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    loss = F.l1_loss(pred, target)
    if grad_weight:
        (pgx, pgy), (tgx, tgy) = image_gradients(pred), image_gradients(target)
        loss = loss + grad_weight * (F.l1_loss(pgx, tgx) + F.l1_loss(pgy, tgy))
    return loss


def structure_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSIM, with the benchmarks' own window and constants (metrics.ssim_torch): the benchmarks score
    SSIM, and L1 alone is content to smooth texture the SSIM of the ground truth keeps."""
    from dereflect.metrics import ssim_torch

    return 1.0 - ssim_torch(pred.float(), target.float())


class PerceptualLoss(nn.Module):
    """L_P: weighted L1 between frozen VGG features of `pred` and `target` (ERRNet / Zhang et al.).

    Default weights depend on the VGG that `source` resolves to (see VGG19_LAYER_WEIGHTS and
    HED_LAYER_WEIGHTS). The target's features are computed without a graph unless it needs gradients.
    """

    def __init__(
        self,
        source: str = "auto",
        layers: Sequence[str] = DEFAULT_LAYERS,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.vgg = VGGFeatures(source, layers)
        if weights is None:
            if tuple(layers) != DEFAULT_LAYERS[: len(layers)]:
                raise ValueError("give layer weights when choosing layers other than the first n defaults")
            weights = (VGG19_LAYER_WEIGHTS if self.vgg.source == "torchvision" else HED_LAYER_WEIGHTS)[: len(layers)]
        if len(weights) != len(layers):
            raise ValueError(f"{len(weights)} weights for {len(layers)} layers")
        self.weights = tuple(float(w) for w in weights)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        pred_features = self.vgg(pred)
        if target.requires_grad:
            target_features = self.vgg(target)
        else:
            with torch.no_grad():
                target_features = self.vgg(target)
        return sum(w * F.l1_loss(p, t) for w, p, t in zip(self.weights, pred_features, target_features))


def exclusion_loss(t: torch.Tensor, r: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """Gradient exclusion loss of Zhang, Ng & Chen (CVPR 2018): T and R should not share edges.

    At each of `levels` scales (2x average pooling between them) the x and y gradients of T and of
    lambda*R are squashed with tanh(g/2) (= 2*sigmoid(g)-1 in their code), where lambda = 2*mean|grad T| /
    mean|grad R| balances the layers' contrast; the loss is mean(tanh_T^2 * tanh_R^2)^(1/4) per image and
    direction, averaged over levels and the batch (they sum over the batch; a mean keeps weights
    batch-size independent). Lambda is per image and its denominator has an epsilon so a flat R is fine.
    """
    if t.shape != r.shape:
        raise ValueError(f"t {tuple(t.shape)} and r {tuple(r.shape)} differ")
    total = t.new_zeros(t.shape[0])
    for level in range(levels):
        tgx, tgy = image_gradients(t)
        rgx, rgy = image_gradients(r)
        for tg, rg in ((tgx, rgx), (tgy, rgy)):
            alpha = 2.0 * tg.abs().mean(dim=(1, 2, 3), keepdim=True) / (rg.abs().mean(dim=(1, 2, 3), keepdim=True) + _EPS)
            t_s = torch.tanh(tg / 2.0)
            r_s = torch.tanh(rg * alpha / 2.0)
            product = (t_s.square() * r_s.square()).mean(dim=(1, 2, 3))
            # clamp: x^(1/4) has an infinite slope at 0 (NaN gradients when T or R is flat)
            total = total + product.clamp_min(1e-16) ** 0.25
        if level + 1 < levels:
            t = F.avg_pool2d(t, 2, ceil_mode=True)
            r = F.avg_pool2d(r, 2, ceil_mode=True)
    return total.mean() / levels


def feature_decoupling_loss(psi_t: torch.Tensor | Sequence[torch.Tensor], psi_r: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """L_FD's feature part: mean squared cosine similarity of per-pixel T and R feature vectors.

    0 when the two layers' features are orthogonal at every pixel (decoupled), 1 when parallel.
    Squared, so anti-parallel features (just as entangled) are penalised too. Lists are scales; the
    result is the mean over scales.
    """
    if isinstance(psi_t, torch.Tensor):
        psi_t, psi_r = [psi_t], [psi_r]  # type: ignore[list-item]
    if len(psi_t) != len(psi_r) or not psi_t:
        raise ValueError(f"need the same non-zero number of scales, got {len(psi_t)} and {len(psi_r)}")
    losses = []
    for ft, fr in zip(psi_t, psi_r):
        if ft.shape != fr.shape:
            raise ValueError(f"T features {tuple(ft.shape)} and R features {tuple(fr.shape)} differ")
        cosine = F.cosine_similarity(ft, fr, dim=1, eps=_EPS)
        losses.append(cosine.square().mean())
    return torch.stack(losses).mean()


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |a-b| over the pixels where mask (B,1,H,W) is 1; 0 when nothing is valid."""
    weight = mask.expand_as(a)
    return (weight * (a - b).abs()).sum() / weight.sum().clamp_min(1.0)


def view_synthesis_loss(
    middle_frame: torch.Tensor,
    t_layers: torch.Tensor,
    r_layers: torch.Tensor,
    flows_t: torch.Tensor,
    flows_r: torch.Tensor,
    mid_index: int,
    compose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """L_VS: re-compose the middle frame from each neighbour's warped T and R layers.

    t_layers, r_layers: (B,N,3,H,W) per-frame layer estimates; flows_t, flows_r: (B,N,2,H,W) flows that
    warp frame i's layer onto the middle frame (the middle frame's own entries are ignored). For every
    i != mid_index: compose(warp(T_i, flow_T_i), warp(R_i, flow_R_i)) vs the middle frame, L1 over the
    pixels where both warps sample inside the image; mean over neighbours. `compose` defaults to T + R
    (the image model I = T + R, with R the reflection's contribution); pass the synthesis' own blend if
    it differs.
    """
    if t_layers.ndim != 5 or t_layers.shape != r_layers.shape:
        raise ValueError(f"t_layers {tuple(t_layers.shape)} and r_layers {tuple(r_layers.shape)} must be equal (B,N,C,H,W)")
    b, n, _, h, w = t_layers.shape
    for name, flow in (("flows_t", flows_t), ("flows_r", flows_r)):
        if tuple(flow.shape) != (b, n, 2, h, w):
            raise ValueError(f"{name} {tuple(flow.shape)} should be {(b, n, 2, h, w)}")
    if middle_frame.shape != t_layers[:, 0].shape:
        raise ValueError(f"middle_frame {tuple(middle_frame.shape)} should be {tuple(t_layers[:, 0].shape)}")
    if not 0 <= mid_index < n or n < 2:
        raise ValueError(f"mid_index {mid_index} with {n} frames")
    compose = compose or torch.add
    losses = []
    for i in range(n):
        if i == mid_index:
            continue
        t_warped, t_inside = warp(t_layers[:, i], flows_t[:, i], return_mask=True)
        r_warped, r_inside = warp(r_layers[:, i], flows_r[:, i], return_mask=True)
        losses.append(masked_l1(compose(t_warped, r_warped), middle_frame, t_inside * r_inside))
    return torch.stack(losses).mean()


def flow_loss(pred_flows: Sequence[torch.Tensor], true_flow: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Multi-scale endpoint error: sum_s weights[s] * mean ||pred_s - resize_flow(true, size_s)||_2.

    pred_flows: list over scales of (B,N,2,h_s,w_s) flows in pixels of that scale; true_flow (B,N,2,H,W)
    at full resolution, resized (vectors scaled with the grid) to each scale. Default weights are
    1/len(scales) each, so the value is the mean EPE over scales.
    """
    if not pred_flows:
        raise ValueError("flow_loss needs at least one scale")
    if weights is None:
        weights = [1.0 / len(pred_flows)] * len(pred_flows)
    if len(weights) != len(pred_flows):
        raise ValueError(f"{len(weights)} weights for {len(pred_flows)} scales")
    b, n, c, big_h, big_w = true_flow.shape
    flat_true = true_flow.reshape(b * n, c, big_h, big_w)
    total = true_flow.new_zeros(())
    for weight, pred in zip(weights, pred_flows):
        if pred.ndim != 5 or pred.shape[:3] != true_flow.shape[:3]:
            raise ValueError(f"predicted flow {tuple(pred.shape)} does not match true flow {tuple(true_flow.shape)}")
        size = tuple(pred.shape[-2:])
        target = flat_true if size == (big_h, big_w) else resize_flow(flat_true, size)
        epe = torch.linalg.vector_norm(pred.reshape(b * n, c, *size) - target, dim=1)
        total = total + weight * epe.mean()
    return total


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix's NLayerDiscriminator): a map of real/fake logits, one per ~70x70 patch at n_layers=3.

    4x4 convs, stride 2 for the first n_layers, LeakyReLU(0.2), instance norm after all but the first
    conv; with `spectral_norm`, spectral normalisation replaces instance norm (the usual pairing with
    hinge losses).
    """

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3, spectral_norm: bool = False) -> None:
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> nn.Module:
            layer = nn.Conv2d(cin, cout, kernel_size=4, stride=stride, padding=1)
            return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer

        def norm(channels: int) -> list[nn.Module]:
            return [] if spectral_norm else [nn.InstanceNorm2d(channels, affine=True)]

        layers: list[nn.Module] = [conv(in_channels, width, 2), nn.LeakyReLU(0.2)]
        channels = width
        for i in range(1, n_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [conv(channels, out, stride), *norm(out), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(conv(channels, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gan_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor, for_discriminator: bool) -> torch.Tensor:
    """L_D (for_discriminator=True) or L_G from discriminator logits on real and generated images.

    "hinge":        L_D = mean(relu(1 - D(real))) + mean(relu(1 + D(fake)));  L_G = -mean(D(fake)).
    "relativistic": RaGAN as in ERRNet (Wei et al. 2019): with BCE-with-logits,
                    L_D = [BCE(D(real) - mean D(fake), 1) + BCE(D(fake) - mean D(real), 0)] / 2,
                    L_G = [BCE(D(real) - mean D(fake), 0) + BCE(D(fake) - mean D(real), 1)] / 2.
    For the discriminator step pass logits of a detached fake; for the generator step D's parameters
    are simply not stepped (real logits carry no generator gradient anyway).
    """
    if kind == "hinge":
        if for_discriminator:
            return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        return -d_fake.mean()
    if kind == "relativistic":
        real_vs_fake = d_real - d_fake.mean()
        fake_vs_real = d_fake - d_real.mean()
        real_label, fake_label = (1.0, 0.0) if for_discriminator else (0.0, 1.0)
        bce = F.binary_cross_entropy_with_logits
        return 0.5 * (
            bce(real_vs_fake, torch.full_like(real_vs_fake, real_label)) + bce(fake_vs_real, torch.full_like(fake_vs_real, fake_label))
        )
    raise ValueError(f"unknown GAN loss {kind!r}; expected 'hinge' or 'relativistic'")


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Per (image, channel): zero mean and unit standard deviation over the spatial positions."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / (std + 1e-5)


def distillation_loss(d_hat: Sequence[torch.Tensor], d_teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_T: L1 between per-channel standardised student (hallucinated) and teacher dynamics, mean over scales.

    Why standardise each channel (zero mean, unit std over h x w) before L1: the teacher's channels
    and scales differ by orders of magnitude, so a raw L1 would be ruled by the few loudest channels
    and the deepest scales, and the weight d would have to be retuned for every teacher checkpoint.
    Standardised, every channel counts equally and the student matches *where* a dynamics channel
    fires, which is what the fusion uses, up to an affine change the student's projection can absorb.
    The teacher is frozen: its maps are detached here.
    """
    if len(d_hat) != len(d_teacher) or not d_hat:
        raise ValueError(f"need the same non-zero number of scales, got {len(d_hat)} and {len(d_teacher)}")
    losses = []
    for student, teacher in zip(d_hat, d_teacher):
        if student.shape != teacher.shape:
            raise ValueError(f"student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} differ")
        losses.append(F.l1_loss(_standardise(student), _standardise(teacher.detach())))
    return torch.stack(losses).mean()
