"""The phone-sized burst model: the MobileNetV2 student, fed the reference frame plus what the burst says.

Why not the teacher: `burst-base` (the multi-view teacher) pays for its own alignment with flow nets,
cost volumes and 12 grid-sample warps: 125 GMAC per 5 x 512x512 burst, seconds on a phone CPU, and
grid sampling is what Core ML, ExecuTorch's XNNPACK and LiteRT take worst. A phone burst is mostly
hand shake, which a global translation captures for the scene (the far plane) and not for the
reflection, which moves differently. So the runtime registers every frame to the reference first
(phase correlation, `burst/frames.py`; the translation is applied in `burst/pipeline.py`), and then:

- where the scene is aligned, the reflection is not: the per-pixel **minimum** over the frames keeps
  the scene and drops most of an additive reflection, and the **mean** blurs the reflection while
  keeping the scene sharp;
- `reference - min` and `reference - mean` (the cues) are therefore mostly reflection (plus whatever
  the translation left misaligned, which the network learns to tell apart from the photo).

The cues (6 channels, scaled by `cue_gain`) enter the student's encoder after its normalised RGB and
its full-resolution stem, both through widened first convolutions whose new input weights start at
zero: built from a single-image student's weights (`init_from`) the burst model is exactly that
student until training teaches it to read the cues, and a static burst (a tripod, or a real pair
used as five equal frames) gives zero cues and the single-image behaviour.

Input contract (as `burst-base`, plus alignment): `input` (N, 5, 3, H, W) float32 RGB in [0,1], the
reference in the middle, every frame already moved onto the reference by a global translation
(`registered_input`; the manifest records it as `constraints.frame_alignment`); output (N, 3, H, W).
Ops: the student's plus ReduceMin/ReduceMean over the frame axis: no grid sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dereflect.models.backbones import MobileNetV2Encoder
from dereflect.models.mobile_student import MobileStudent, MobileStudentConfig

CUE_CHANNELS = 6  # reference - min, reference - mean


@dataclass
class BurstStudentConfig(MobileStudentConfig):
    n_frames: int = 5
    cue_gain: float = 4.0  # cues are small differences; scaled to the normalised RGB's range
    use_kt: bool = False  # no single-image teacher target for a model that sees the burst


class BurstStudent(MobileStudent):
    """(N, T, 3, H, W) registered frames -> (N, 3, H, W) transmission of the middle one; H, W multiples of 16."""

    input_frames = 5
    #: Frames must arrive moved onto the reference (burst/pipeline.py `model_input(align="full")`).
    registered_input = True

    def __init__(self, config: BurstStudentConfig | None = None) -> None:
        config = config or BurstStudentConfig()
        super().__init__(config)
        self.config: BurstStudentConfig = config
        self.input_frames = int(config.n_frames)
        first = self.encoder.features[0]
        first[0] = _widen(first[0], CUE_CHANNELS)
        self.stem[0] = _widen(self.stem[0], CUE_CHANNELS)

    def cues(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference frame and its cue channels (reference - min, reference - mean) x cue_gain."""
        ref = frames[:, self.input_frames // 2]
        low = torch.amin(frames, dim=1)
        mean = torch.mean(frames, dim=1)
        return ref, torch.cat([ref - low, ref - mean], 1) * self.config.cue_gain

    def forward_features(self, frames: torch.Tensor, colour: torch.Tensor | None = None, cue: torch.Tensor | None = None):  # type: ignore[override]
        ref, cue = self.cues(frames)
        return super().forward_features(ref, colour, cue)

    def forward(self, frames: torch.Tensor, colour: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return self.forward_features(frames, colour)["transmission"]

    def load_pretrained(self) -> str:
        """ImageNet weights into the encoder (fresh runs), the cue inputs of its first conv at zero."""
        if self.config.pretrained == "none":
            return "random init"
        plain = MobileNetV2Encoder()
        source = plain.load_imagenet()
        self.encoder.load_state_dict(widen_state(plain.state_dict(), self.encoder.state_dict()))
        return str(source)

    def init_from(self, student: nn.Module) -> None:
        """Start from a single-image MobileStudent of the same widths (`train --init`): every weight
        copied, the cue inputs zero, so this model's output equals the student's until trained."""
        if not isinstance(student, MobileStudent) or isinstance(student, BurstStudent):
            raise ValueError(f"a burst student starts from a single-image MobileNetV2 student, not {type(student).__name__}")
        self.load_state_dict(widen_state(student.state_dict(), self.state_dict()))


def _widen(conv: nn.Conv2d, extra: int) -> nn.Conv2d:
    """The same conv with `extra` more input channels (weights zero: they change nothing until trained)."""
    wide = nn.Conv2d(
        conv.in_channels + extra,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, : conv.in_channels] = conv.weight
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    return wide


def widen_state(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`source` shaped like `target`: equal tensors copied, tensors wider in the input-channel axis
    (dim 1) zero-padded there; anything else is an error naming the key."""
    out = {}
    for key, want in target.items():
        if key not in source:
            raise ValueError(f"{key}: missing from the source weights")
        have = source[key]
        if have.shape == want.shape:
            out[key] = have.clone()
        elif have.dim() == 4 and have.shape[0] == want.shape[0] and have.shape[2:] == want.shape[2:] and have.shape[1] < want.shape[1]:
            wide = torch.zeros_like(want)
            wide[:, : have.shape[1]] = have
            out[key] = wide
        else:
            raise ValueError(f"{key}: source shape {tuple(have.shape)} does not fit {tuple(want.shape)}")
    return out
