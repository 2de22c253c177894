"""Building blocks shared by the teacher and the student.

The student uses only ops every export target runs well (Conv, ReLU/LeakyReLU, Add, Concat,
Resize); `warp` (grid_sample) is for the teacher and the losses only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pixel_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 2, H, W) pixel coordinates: channel 0 is x (column), channel 1 is y (row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys)).unsqueeze(0)


def warp(x: torch.Tensor, flow: torch.Tensor, return_mask: bool = False):
    """Backward-warp `x` with `flow` (pixels): out(p) = x(p + flow(p)), bilinear, zeros outside.

    Flow convention used across the project (synthesis, Flow Net, losses): a flow lives on the
    grid of the frame we warp *to* (the middle frame); channel 0 is dx, channel 1 is dy. So
    warping neighbour i with the true flow of a layer reproduces that layer in the middle frame.
    With `return_mask`, also returns a (B,1,H,W) mask of pixels whose source lies inside x.
    """
    b, _, h, w = x.shape
    if flow.shape[-2:] != (h, w):
        raise ValueError(f"flow {tuple(flow.shape)} does not match features {tuple(x.shape)}")
    # Sampling positions need float32 even under bf16 autocast: bf16 cannot tell pixel 200 from 201.
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _warp_fp32(x.float(), flow.float(), return_mask)


def _warp_fp32(x: torch.Tensor, flow: torch.Tensor, return_mask: bool):
    h, w = x.shape[-2:]
    coords = pixel_grid(h, w, x.device, x.dtype) + flow
    gx = 2.0 * coords[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * coords[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if not return_mask:
        return out
    inside = (gx.abs() <= 1.0) & (gy.abs() <= 1.0)
    return out, inside.unsqueeze(1).to(x.dtype)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a pixel flow field to `size` (H, W), scaling the vectors with the grid."""
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], device=flow.device, dtype=flow.dtype)
    return out * scale.view(1, 2, 1, 1)


def conv_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, act: bool = True) -> nn.Sequential:
    """Conv + LeakyReLU(0.1): the one conv unit everywhere (no norm layers: batch sizes are small
    and norms complicate INT8 export; LeakyReLU quantizes as well as ReLU on every target)."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)]
    if act:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs with an identity skip."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_act(ch, ch), conv_act(ch, ch, act=False))
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def stage(in_ch: int, out_ch: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """A conv (strided to downsample) followed by `blocks` residual blocks."""
    return nn.Sequential(conv_act(in_ch, out_ch, stride=stride), *[ResBlock(out_ch) for _ in range(blocks)])


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """x2 bilinear upsampling by a constant scale: one ONNX Resize that keeps H and W dynamic."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class Encoder(nn.Module):
    """Per-image multi-scale features: full resolution, 1/2, 1/4, 1/8 (the last three feed the
    dynamics representation). Used per frame by the teacher and once by the student."""

    def __init__(self, widths: tuple[int, int, int, int], blocks: tuple[int, int, int]) -> None:
        super().__init__()
        c0, c1, c2, c3 = widths
        self.stem = conv_act(3, c0)
        self.down1 = stage(c0, c1, blocks[0], stride=2)
        self.down2 = stage(c1, c2, blocks[1], stride=2)
        self.down3 = stage(c2, c3, blocks[2], stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f0 = self.stem(x)
        f1 = self.down1(f0)
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        return f0, [f1, f2, f3]


class Decoder(nn.Module):
    """U-Net decoder from three scales (1/8 -> 1/4 -> 1/2) plus a full-resolution skip.

    Predicts a residual that is added to the input photo: the last conv starts at zero, so an
    untrained network is exactly the identity baseline (a strong one on real photos) and
    training can only move away from it where the data says so.
    """

    def __init__(self, in_chs: tuple[int, int, int], widths: tuple[int, int, int, int], out_ch: int = 3) -> None:
        super().__init__()
        c0, c1, c2, c3 = widths
        self.dec3 = conv_act(in_chs[2], c3)
        self.dec2 = conv_act(c3 + in_chs[1], c2)
        self.dec1 = conv_act(c2 + in_chs[0], c1)
        self.dec0 = conv_act(c1 + c0, c0)
        self.head = nn.Conv2d(c0, out_ch, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, full: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        y = self.dec3(feats[2])
        y = self.dec2(torch.cat([upsample2(y), feats[1]], 1))
        y = self.dec1(torch.cat([upsample2(y), feats[0]], 1))
        y = self.dec0(torch.cat([upsample2(y), full], 1))
        return self.head(y)


def local_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """Cost volume: dot products of f1(p) with f2(p + d) for every |dx|,|dy| <= radius,
    channel-normalised. (B, (2r+1)^2, H, W); a light stand-in for PWC-Net's correlation."""
    b, c, h, w = f1.shape
    padded = F.pad(f2, (radius, radius, radius, radius))
    costs = []
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            costs.append((f1 * padded[:, :, dy : dy + h, dx : dx + w]).mean(1))
    return F.leaky_relu(torch.stack(costs, 1), 0.1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple (the graphs need multiples of 8); returns the
    padded tensor and the original (H, W) to crop back to."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
