"""The single-image student: Encoder + Hallucination (+ KT at training time) + Decoder.

The student sees one photo. Its Hallucination module predicts D_hat, a stand-in for the
teacher's reflection-dynamics representation D (same three scales); during distillation a
1x1 "KT" projection (owned by the trainer, not shipped) maps D_hat onto the teacher's channels
and L_T pulls them together. The decoder reads the encoder's features and D_hat and predicts a
residual on the photo. Only Conv, LeakyReLU, Add, Concat, Resize and Clip: every export target
runs it. H and W must be multiples of 8 (three stride-2 convs); padding is the runtime's job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dereflect.models.blocks import Decoder, Encoder, ResBlock, conv_act, upsample2


@dataclass
class StudentConfig:
    widths: tuple[int, int, int, int] = (16, 24, 32, 48)  # full, 1/2, 1/4, 1/8
    blocks: tuple[int, int, int] = (0, 1, 1)  # residual blocks per encoder stage
    dyn_channels: tuple[int, int, int] = (12, 16, 24)  # D_hat channels at 1/2, 1/4, 1/8
    halluc_blocks: int = 1  # residual blocks in the hallucination module at 1/8
    use_encoder: bool = True  # False: "w/o Encoder" (decoder sees only D_hat)
    use_hallucination: bool = True  # False: "w/o Hallucination" (no D_hat branch)
    use_kt: bool = True  # False: "w/o KT" (trainer drops L_T; recorded so a checkpoint says how it was made)

    def to_dict(self) -> dict:
        return asdict(self)


class Hallucination(nn.Module):
    """Predicts D_hat at 1/8, 1/4, 1/2 from encoder features, coarse to fine (FPN-style), so the
    coarse dynamics guess (where reflections are, how they would move) informs the finer ones."""

    def __init__(self, feat_chs: tuple[int, int, int], dyn: tuple[int, int, int], blocks: int) -> None:
        super().__init__()
        self.top = nn.Sequential(conv_act(feat_chs[2], dyn[2]), *[ResBlock(dyn[2]) for _ in range(blocks)])
        self.mid = conv_act(feat_chs[1] + dyn[2], dyn[1])
        self.fine = conv_act(feat_chs[0] + dyn[1], dyn[0])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        d3 = self.top(feats[2])
        d2 = self.mid(torch.cat([feats[1], upsample2(d3)], 1))
        d1 = self.fine(torch.cat([feats[0], upsample2(d2)], 1))
        return [d1, d2, d3]


class Student(nn.Module):
    """Single image (B,3,H,W) in [0,1] -> transmission (B,3,H,W) in [0,1]."""

    size_multiple = 8

    def __init__(self, config: StudentConfig | None = None) -> None:
        super().__init__()
        self.config = config or StudentConfig()
        cfg = self.config
        if not (cfg.use_encoder or cfg.use_hallucination):
            raise ValueError("a student needs its encoder or its hallucination module (or both)")
        self.encoder = Encoder(cfg.widths, cfg.blocks)
        feat_chs = tuple(cfg.widths[1:])
        self.hallucination = Hallucination(feat_chs, cfg.dyn_channels, cfg.halluc_blocks) if cfg.use_hallucination else None
        dec_in = [0, 0, 0]
        for s in range(3):
            dec_in[s] = (feat_chs[s] if cfg.use_encoder else 0) + (cfg.dyn_channels[s] if cfg.use_hallucination else 0)
        self.decoder = Decoder(tuple(dec_in), cfg.widths)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor] | None]:
        """Training view: the transmission and the hallucinated dynamics D_hat (None without it)."""
        full, feats = self.encoder(x)
        d_hat = self.hallucination(feats) if self.hallucination is not None else None
        if d_hat is None:
            dec_feats = feats
        elif self.config.use_encoder:
            dec_feats = [torch.cat([f, d], 1) for f, d in zip(feats, d_hat)]
        else:
            dec_feats = d_hat
        residual = self.decoder(full, dec_feats)
        return {"transmission": torch.clamp(x + residual, 0.0, 1.0), "d_hat": d_hat}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["transmission"]
