"""The student on a pretrained mobile encoder: MobileNetV2 taps + Hallucination + light decoder + global colour path.

Same contract as `student.Student` (one photo (B,3,H,W) in [0,1] -> transmission; `forward_features`
gives D_hat at the teacher's three scales for KT), with three changes the measurements asked for:

- **Encoder**: ImageNet MobileNetV2 to stride 16 (`backbones.py`), taps at 1/2..1/16, BatchNorm frozen
  in training and folded for export. A light full-resolution stem feeds the last decoder stage, so
  fine detail does not have to survive the stride-2 backbone.
- **Global path**: the photo through glass is darker and tinted compared with the scene (a per-channel
  least-squares gain and offset alone moves Real20 from 19.1 to 21.8 dB). The deepest features are
  averaged over the whole image and a small MLP predicts a 3x3 colour matrix and an offset, applied to
  the photo before the local residual. It starts at the identity (last layer zero), like the residual
  head, so an untrained student is exactly the identity baseline. A photo cut into tiles gets one
  estimate, computed once on a downscaled copy and fed to every tile (`photo_colour`; exported graphs
  take it as a second input, `PhotoColourGraph`).
- **Decoder**: 1/16 -> 1/8 -> 1/4 -> 1/2 -> full, each stage one conv on [upsampled, encoder tap, D_hat].

Ops: Conv (incl. depthwise), ReLU6/LeakyReLU, Add, Mul, Sub, Concat, ReduceMean, Resize, Slice, Clip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dereflect.models.backbones import EfficientNetLite0Encoder, MobileNetV2Encoder, fold_batchnorm, freeze_batchnorm
from dereflect.models.blocks import ResBlock, conv_act, upsample2

ENCODERS = {"mobilenet_v2": MobileNetV2Encoder, "efficientnet_lite0": EfficientNetLite0Encoder}


@dataclass
class MobileStudentConfig:
    backbone: str = "mobilenet_v2"  # or "efficientnet_lite0" (backbones.py; both ImageNet, stride 16)
    pretrained: str = "imagenet"  # what the trainer loads into the encoder when starting from scratch ("none": random)
    stem_width: int = 16  # full-resolution path
    dec_widths: tuple[int, int, int, int] = (24, 32, 48, 64)  # decoder at 1/2, 1/4, 1/8, 1/16
    dyn_channels: tuple[int, int, int] = (12, 16, 24)  # D_hat channels at 1/2, 1/4, 1/8 (the teacher's scales)
    halluc_blocks: int = 1
    global_hidden: int = 32
    use_global: bool = True  # False: "w/o global path" ablation
    use_encoder: bool = True  # kept for the trainer's switches; the decoder always reads the encoder taps
    use_hallucination: bool = True
    use_kt: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class MobileHallucination(nn.Module):
    """D_hat at 1/2, 1/4, 1/8 from the encoder taps, coarse to fine, starting from the 1/16 tap."""

    def __init__(self, taps: tuple[int, int, int, int], dyn: tuple[int, int, int], blocks: int) -> None:
        super().__init__()
        self.top = nn.Sequential(conv_act(taps[3] + taps[2], dyn[2]), *[ResBlock(dyn[2]) for _ in range(blocks)])
        self.mid = conv_act(taps[1] + dyn[2], dyn[1])
        self.fine = conv_act(taps[0] + dyn[1], dyn[0])

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        d3 = self.top(torch.cat([taps[2], upsample2(taps[3])], 1))
        d2 = self.mid(torch.cat([taps[1], upsample2(d3)], 1))
        d1 = self.fine(torch.cat([taps[0], upsample2(d2)], 1))
        return [d1, d2, d3]


class GlobalColour(nn.Module):
    """Image-level colour transform (3x3 matrix + offset) from the mean of the deepest features."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(hidden, 12, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def params(self, deep: torch.Tensor) -> torch.Tensor:
        """(B, 12, 1, 1): 9 entries of (matrix - identity), then 3 offsets."""
        return self.mlp(deep.mean((2, 3), keepdim=True))

    @staticmethod
    def apply(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """y_c = x_c + sum_k m_ck x_k + b_c, written as Mul/Add on slices (no Einsum/MatMul: every target runs it)."""
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        rows = [
            x[:, c : c + 1]
            + p[:, 3 * c : 3 * c + 1] * r
            + p[:, 3 * c + 1 : 3 * c + 2] * g
            + p[:, 3 * c + 2 : 3 * c + 3] * b
            + p[:, 9 + c : 10 + c]
            for c in range(3)
        ]
        return torch.cat(rows, 1)


class PhotoBlend(nn.Module):
    """colour + w * (photo - colour) for a (B,13,1,1) photo feed (12 parameters, weight w): the photo's
    colour transform where w is 1, the input's own where it is 0. A module of its own so exported graphs
    name its nodes (`photo_blend/...`) and INT8 builds keep them in float: the feed holds the weight 1
    beside parameters of a few hundredths, and one INT8 scale for both would round the parameters away."""

    def forward(self, colour: torch.Tensor, feed: torch.Tensor) -> torch.Tensor:
        return colour + feed[:, 12:13] * (feed[:, :12] - colour)


class MobileStudent(nn.Module):
    """Single image (B,3,H,W) in [0,1] -> transmission; H, W multiples of 16."""

    size_multiple = 16

    def __init__(self, config: MobileStudentConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MobileStudentConfig()
        if cfg.backbone not in ENCODERS:
            raise ValueError(f"unknown backbone '{cfg.backbone}' ({', '.join(ENCODERS)})")
        self.encoder = ENCODERS[cfg.backbone]()
        taps = self.encoder.tap_channels
        self.stem = conv_act(3, cfg.stem_width)
        self.hallucination = MobileHallucination(taps, cfg.dyn_channels, cfg.halluc_blocks) if cfg.use_hallucination else None
        dyn = cfg.dyn_channels if cfg.use_hallucination else (0, 0, 0)
        c1, c2, c3, c4 = cfg.dec_widths
        self.dec4 = conv_act(taps[3], c4)
        self.dec3 = conv_act(c4 + taps[2] + dyn[2], c3)
        self.dec2 = conv_act(c3 + taps[1] + dyn[1], c2)
        self.dec1 = conv_act(c2 + taps[0] + dyn[0], c1)
        self.dec0 = conv_act(c1 + cfg.stem_width, cfg.stem_width)
        self.head = nn.Conv2d(cfg.stem_width, 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.colour = GlobalColour(taps[3], cfg.global_hidden) if cfg.use_global else None
        self.photo_blend = PhotoBlend()  # no weights: exported graphs only (PhotoColourGraph)

    def train(self, mode: bool = True) -> MobileStudent:
        super().train(mode)
        freeze_batchnorm(self.encoder)
        return self

    def load_pretrained(self) -> str:
        """Load the encoder's ImageNet weights (trainer, fresh runs only); returns their source."""
        if self.config.pretrained == "none":
            return "random init"
        return str(self.encoder.load_imagenet())

    def fold_batchnorm(self) -> MobileStudent:
        """For export: BatchNorm folded into the convs (same outputs in eval mode)."""
        fold_batchnorm(self.encoder)
        return self

    def photo_colour(self, x: torch.Tensor) -> torch.Tensor | None:
        """The image-level colour transform (B, 12, 1, 1) of a whole photo, or None without a global path.

        A photo cut into tiles should get one estimate, not one per tile (a tile of sky and a tile of
        wall would be corrected differently: seams in colour). The runtime computes this once on a
        downscaled copy of the photo (runtime/backends/torch_backend.py) and passes it to every tile.
        """
        if self.colour is None:
            return None
        return self.colour.params(self.encoder(x)[3])

    def forward_features(
        self,
        x: torch.Tensor,
        colour: torch.Tensor | None = None,
        cue: torch.Tensor | None = None,
        photo_feed: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor] | None]:
        """colour: the photo's image-level transform (`photo_colour`) to use instead of this input's own.
        cue: extra channels beside the photo for the encoder and the stem (the burst student's
        multi-frame cues, models/burst_student.py); None for a single-image student.
        photo_feed: the exported graphs' form of `colour` (`PhotoColourGraph`): (B, 13, 1, 1), the
        photo's 12 parameters and a weight, 1 to use them and 0 to use this input's own estimate.
        "own_colour" in the result is always this input's own estimate (None without a global path)."""
        taps = self.encoder(x, cue)
        d_hat = self.hallucination(taps) if self.hallucination is not None else None
        extra = d_hat if d_hat is not None else [None, None, None]
        y = self.dec4(taps[3])
        y = self.dec3(_cat(upsample2(y), taps[2], extra[2]))
        y = self.dec2(_cat(upsample2(y), taps[1], extra[1]))
        y = self.dec1(_cat(upsample2(y), taps[0], extra[0]))
        y = self.dec0(torch.cat([upsample2(y), self.stem(_cat(x, cue))], 1))
        base, own = x, None
        if self.colour is not None:
            own = self.colour.params(taps[3]) if colour is None or photo_feed is not None else None
            if colour is None:
                colour = own
            if photo_feed is not None:
                colour = self.photo_blend(colour, photo_feed)
            base = GlobalColour.apply(x, colour)
        return {"transmission": torch.clamp(base + self.head(y), 0.0, 1.0), "d_hat": d_hat, "colour": colour, "own_colour": own}

    def forward(self, x: torch.Tensor, colour: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(x, colour)["transmission"]


def _cat(*parts: torch.Tensor | None) -> torch.Tensor:
    return torch.cat([p for p in parts if p is not None], 1)


#: Channels of an exported graph's `photo_colour` input: the 12 parameters of GlobalColour and a weight.
PHOTO_FEED_CHANNELS = 13


class PhotoColourGraph(nn.Module):
    """The exported form of a student with a global colour path: two inputs, two outputs.

    Why: the runtime cuts a big photo into tiles, and a colour transform estimated per tile differs
    from tile to tile (a tile of sky and a tile of wall: seams in colour). The runtime runs the graph
    once on a downscaled copy of the photo with weight 0, reads `colour`, and feeds it with weight 1
    to every tile. An image that is not tiled runs once, with weight 0: exactly the student.

    inputs:  image (N,3,H,W); photo_feed (N,13,1,1): the photo's colour transform (12) and its weight
    outputs: transmission (N,3,H,W); colour (N,12): this input's own estimate (weight ignored; flat, as
             XNNPACK's INT8 delegate cannot hand back a (N,12,1,1) it keeps channels-last)
    """

    def __init__(self, student: MobileStudent) -> None:
        super().__init__()
        if getattr(student, "colour", None) is None:
            raise ValueError("PhotoColourGraph needs a student with a global colour path (use_global)")
        self.student = student
        self.size_multiple = student.size_multiple
        self.config = student.config
        for key in ("checkpoint_info", "model_name"):
            if hasattr(student, key):
                setattr(self, key, getattr(student, key))

    def forward(self, image: torch.Tensor, photo_feed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.student.forward_features(image, photo_feed=photo_feed)
        return out["transmission"], out["own_colour"].flatten(1)


def export_graph(model: nn.Module) -> nn.Module:
    """What an ONNX-based export writes for `model`: a single-image student with a global colour path
    as its PhotoColourGraph; anything else (student-nano, burst models) as it is."""
    if isinstance(model, MobileStudent) and model.colour is not None and getattr(model, "input_frames", None) is None:
        return PhotoColourGraph(model)
    return model


def photo_feeds(student: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Feeds that exercise both paths of a PhotoColourGraph on a set of images (export's calibration
    and parity sets): even images weight 0 (their own estimate); odd ones weight 1 with the estimate
    of the next image, a colour transform that is not their own, as a tile gets its photo's."""
    with torch.no_grad():
        own = torch.cat([student.photo_colour(images[i : i + 1]) for i in range(images.shape[0])])
    feeds = torch.zeros(images.shape[0], PHOTO_FEED_CHANNELS, 1, 1)
    for i in range(1, images.shape[0], 2):
        feeds[i, :12] = own[(i + 1) % images.shape[0]]
        feeds[i, 12] = 1.0
    return feeds
