"""The multi-view teacher: per-image features + the MKL module (Decouple, Flow, Fusion) + decoder.

Input: a short sequence (B,N,3,H,W) shot through glass while the camera moves (N = 3 or 5;
any N works: neighbours are pooled with mean and max). Output: T and R of the middle frame, and
the reflection-dynamics representation D (three scales) that the student learns to hallucinate.

Paper's modules, and what we chose where it is silent:
- Per-image features: the shared Encoder, applied to every frame.
- Decouple Net: per scale, two conv heads split a frame's features into Psi_T and Psi_R; a light
  head decodes each frame's T_i and R_i images from the 1/2-scale Psi so that L_FD (exclusion)
  and L_VS (view synthesis) act on images as well as features.
- Flow Net: per layer (T and R have their own motion), per neighbour, coarse to fine over
  1/8 -> 1/4 -> 1/2 with a local correlation cost volume (PWC-Net-like, radius 4/3/2), each level
  warping the neighbour by the upsampled coarser flow and predicting a residual.
- Fusion: the neighbours' Psi warped to the middle frame by their own layer's flow, pooled
  (mean, max) and fused with the middle frame's Psi by conv blocks into D at each scale.
Ablation switches (the paper's table): use_mkl, use_decouple, use_flow, use_fusion.
`privileged` adds frozen ImageNet/HED features of every frame (the teacher never ships; see privileged.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from dereflect.models.blocks import (
    Decoder,
    Encoder,
    ResBlock,
    conv_act,
    local_correlation,
    resize_flow,
    upsample2,
    warp,
)


@dataclass
class TeacherConfig:
    n_frames: int = 5
    widths: tuple[int, int, int, int] = (24, 48, 64, 96)  # full, 1/2, 1/4, 1/8
    blocks: tuple[int, int, int] = (1, 1, 2)
    dyn_channels: tuple[int, int, int] = (32, 48, 64)  # D at 1/2, 1/4, 1/8
    flow_radius: tuple[int, int, int] = (2, 3, 4)  # correlation radius at 1/2, 1/4, 1/8
    fusion_blocks: int = 1
    use_mkl: bool = True  # False: "w/o MKL" — D from plain per-frame features (mean over frames)
    use_decouple: bool = True  # False: "w/o Decouple Net" — one feature stream, one flow
    use_flow: bool = True  # False: "w/o Flow Net" — neighbours are not aligned
    use_fusion: bool = True  # False: "w/o Fusion Net" — a 1x1 projection instead of conv blocks
    privileged: bool = False  # True: frozen HED-VGG16 + ImageNet MobileNetV2 features of every frame (models/privileged.py)
    use_global: bool = False  # True: the students' image-level colour transform on the middle frame (mobile_student.GlobalColour)

    def to_dict(self) -> dict:
        return asdict(self)


class FlowLevel(nn.Module):
    """One pyramid level of the Flow Net: cost volume + features + upsampled flow -> flow."""

    def __init__(self, ch: int, radius: int) -> None:
        super().__init__()
        self.radius = radius
        n_cost = (2 * radius + 1) ** 2
        hidden = max(32, ch // 2)
        self.net = nn.Sequential(
            conv_act(n_cost + 2 * ch + 2, hidden),
            conv_act(hidden, hidden // 2),
            nn.Conv2d(hidden // 2, 2, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, mid: torch.Tensor, nb: torch.Tensor, init_flow: torch.Tensor) -> torch.Tensor:
        aligned = warp(nb, init_flow)
        cost = local_correlation(mid, aligned, self.radius)
        step = self.net(torch.cat([cost, mid, aligned.to(mid.dtype), init_flow.to(mid.dtype)], 1))
        return init_flow.float() + step.float()  # flows accumulate in float32 even under autocast


class FlowNet(nn.Module):
    """Coarse-to-fine flow of one layer from each neighbour frame to the middle frame."""

    def __init__(self, chs: tuple[int, int, int], radii: tuple[int, int, int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList([FlowLevel(c, r) for c, r in zip(chs, radii)])

    def forward(self, mid: list[torch.Tensor], nb: list[torch.Tensor]) -> list[torch.Tensor]:
        """mid/nb: per scale (1/2, 1/4, 1/8) features (B',C,h,w). Returns flows per scale, pixels at that scale."""
        flows: list[torch.Tensor] = [None, None, None]  # type: ignore[list-item]
        flow = torch.zeros_like(mid[2][:, :2])
        for s in (2, 1, 0):
            if s < 2:
                flow = resize_flow(flow, mid[s].shape[-2:])
            flow = self.levels[s](mid[s], nb[s], flow)
            flows[s] = flow
        return flows


class Fusion(nn.Module):
    """Fuses the middle frame's features with pooled aligned neighbours into D at one scale."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, use_convs: bool) -> None:
        super().__init__()
        if use_convs:
            self.net = nn.Sequential(conv_act(in_ch, out_ch), *[ResBlock(out_ch) for _ in range(blocks)])
        else:
            self.net = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Teacher(nn.Module):
    """Multi-view sequence (B,N,3,H,W) -> dict with transmission, reflection, D and intermediates."""

    size_multiple = 8

    def __init__(self, config: TeacherConfig | None = None) -> None:
        super().__init__()
        self.config = config or TeacherConfig()
        cfg = self.config
        feat = tuple(cfg.widths[1:])
        self.encoder = Encoder(cfg.widths, cfg.blocks)
        self.privileged = None
        if cfg.privileged:
            from dereflect.models.privileged import PrivilegedFeatures

            self.privileged = PrivilegedFeatures(feat)
        self.decouple_t = nn.ModuleList([conv_act(c, c) for c in feat]) if cfg.use_mkl and cfg.use_decouple else None
        self.decouple_r = nn.ModuleList([conv_act(c, c) for c in feat]) if cfg.use_mkl and cfg.use_decouple else None
        n_layers = 2 if cfg.use_decouple else 1
        if cfg.use_mkl and cfg.use_flow:
            self.flow_nets = nn.ModuleList([FlowNet(feat, cfg.flow_radius) for _ in range(n_layers)])
        else:
            self.flow_nets = None
        # D's input per scale: for each layer stream, middle + mean + max of the aligned neighbours.
        fuse_in = [3 * c * n_layers for c in feat] if cfg.use_mkl else [2 * c for c in feat]
        self.fusion = nn.ModuleList(
            [Fusion(i, d, cfg.fusion_blocks, cfg.use_fusion or not cfg.use_mkl) for i, d in zip(fuse_in, cfg.dyn_channels)]
        )
        self.decoder = Decoder(tuple(cfg.dyn_channels), cfg.widths, out_ch=6)
        # Glass darkens and tints the scene (issue 13, item 2): the same image-level 3x3 + offset as the
        # students, from the middle frame's pooled 1/8 dynamics, zero at start (a plain teacher until trained).
        self.colour = None
        if cfg.use_global:
            from dereflect.models.mobile_student import GlobalColour

            self.colour = GlobalColour(cfg.dyn_channels[2], 32)
        # Per-frame layer images from the 1/2-scale decoupled features (for L_FD and L_VS).
        if cfg.use_mkl and cfg.use_decouple:
            self.layer_head_t = nn.Sequential(conv_act(feat[0], feat[0]), nn.Conv2d(feat[0], 3, 3, padding=1))
            self.layer_head_r = nn.Sequential(conv_act(feat[0], feat[0]), nn.Conv2d(feat[0], 3, 3, padding=1))
        else:
            self.layer_head_t = self.layer_head_r = None

    def init_from(self, teacher: nn.Module) -> None:
        """Start a privileged teacher from a plain one of the same widths (`train --init`): every weight
        copied, the privileged projections (and a new global colour path) zero, so step 0 is exactly
        that teacher (a fine-tune on a CPU instead of a new teacher from scratch)."""
        added = dict(privileged=self.config.privileged, use_global=self.config.use_global)  # the parts that start at zero
        same = isinstance(teacher, Teacher) and replace(teacher.config, **added) == self.config
        if not same or teacher.privileged is not None or self.privileged is None:
            raise ValueError("a privileged teacher starts from a plain teacher of the same widths")
        missing, unexpected = self.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any(not k.startswith(("privileged.", "colour.")) for k in missing):
            raise ValueError(f"state mismatch: missing {missing}, unexpected {unexpected}")

    @staticmethod
    def _pool(mid: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        """Middle features + mean and max over the aligned neighbours: invariant to N and order."""
        return torch.cat([mid, aligned.mean(1), aligned.amax(1)], 1)

    def forward(self, frames: torch.Tensor) -> dict:
        b, n, _, h, w = frames.shape
        if n < 2:
            raise ValueError(f"the teacher needs a sequence of >= 2 frames, got {n}")
        mid = n // 2
        nbs = [i for i in range(n) if i != mid]
        full, feats = self.encoder(frames.flatten(0, 1))
        if self.privileged is not None:
            feats = self.privileged(frames.flatten(0, 1), feats)
        feats = [f.unflatten(0, (b, n)) for f in feats]  # per scale (B,N,C,h,w)
        middle = frames[:, mid]
        out: dict = {"mid_index": mid}

        if not self.config.use_mkl:
            d = [fu(torch.cat([f[:, mid], f.mean(1)], 1)) for fu, f in zip(self.fusion, feats)]
        else:
            if self.decouple_t is not None:
                streams = {
                    "T": [head(f.flatten(0, 1)).unflatten(0, (b, n)) for head, f in zip(self.decouple_t, feats)],
                    "R": [head(f.flatten(0, 1)).unflatten(0, (b, n)) for head, f in zip(self.decouple_r, feats)],
                }
            else:
                streams = {"T": feats}
            out["psi_T"] = streams["T"]
            out["psi_R"] = streams.get("R")
            pooled: list[list[torch.Tensor]] = [[], [], []]
            for li, (name, psi) in enumerate(streams.items()):
                psi_mid = [p[:, mid] for p in psi]
                psi_nb = [p[:, nbs] for p in psi]  # (B,N-1,C,h,w)
                if self.flow_nets is not None:
                    k = len(nbs)
                    rep = [p.unsqueeze(1).expand(-1, k, -1, -1, -1).flatten(0, 1) for p in psi_mid]
                    flows = self.flow_nets[li](rep, [p.flatten(0, 1) for p in psi_nb])
                    aligned = [warp(p.flatten(0, 1), f).unflatten(0, (b, k)) for p, f in zip(psi_nb, flows)]
                    # Full list of flows per scale, (B,N,2,h,w) with zeros for the middle frame.
                    full_flows = []
                    for f in flows:
                        f = f.unflatten(0, (b, k))
                        full_flows.append(torch.cat([f[:, :mid], torch.zeros_like(f[:, :1]), f[:, mid:]], 1))
                    out[f"flows_{name}"] = full_flows
                else:
                    aligned = psi_nb
                for s in range(3):
                    pooled[s].append(self._pool(psi_mid[s], aligned[s]))
            if "flows_T" in out and "flows_R" not in out:
                out["flows_R"] = out["flows_T"]  # one stream: the same motion for both layers
            d = [fu(torch.cat(p, 1)) for fu, p in zip(self.fusion, pooled)]
            if self.layer_head_t is not None:
                p_t = streams["T"][0].flatten(0, 1)
                p_r = streams["R"][0].flatten(0, 1)
                frames_flat = frames.flatten(0, 1)
                out["layers_T"] = torch.clamp(frames_flat + upsample2(self.layer_head_t(p_t)), 0, 1).unflatten(0, (b, n))
                out["layers_R"] = torch.clamp(upsample2(self.layer_head_r(p_r)), 0, 1).unflatten(0, (b, n))

        full_mid = full.unflatten(0, (b, n))[:, mid]
        res = self.decoder(full_mid, d)
        base = middle if self.colour is None else self.colour.apply(middle, self.colour.params(d[2]))
        out["transmission"] = torch.clamp(base + res[:, :3], 0.0, 1.0)
        out["reflection"] = torch.clamp(middle - out["transmission"] + res[:, 3:], 0.0, 1.0)
        out["d"] = d
        return out
