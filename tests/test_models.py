"""Networks: forward shapes for every preset and ablation switch, checkpoints, bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from dereflect.errors import DereflectError
from dereflect.models import count_params, create_model, list_models, load_checkpoint, save_checkpoint

STUDENTS = [n for n in list_models() if n.startswith("student")]
TEACHERS = [n for n in list_models() if n.startswith("teacher")]


@pytest.mark.parametrize("name", STUDENTS)
def test_student_presets_shapes_and_identity_start(name):
    model = create_model(name).eval()
    x = torch.rand(2, 3, 48, 64)
    out = model.forward_features(x)
    assert out["transmission"].shape == x.shape
    cfg = model.config
    for s, d in enumerate(out["d_hat"]):
        assert d.shape == (2, cfg.dyn_channels[s], 48 >> (s + 1), 64 >> (s + 1))
    # The residual head starts at zero: an untrained student is the identity baseline.
    assert torch.equal(model(x), x)


@pytest.mark.parametrize(
    "switches",
    [dict(use_hallucination=False), dict(use_encoder=False), dict(use_kt=False)],
)
def test_student_ablations(switches):
    model = create_model("student-nano", **switches)
    with torch.no_grad():
        model.decoder.head.weight.normal_()
    out = model.forward_features(torch.rand(1, 3, 32, 32))
    assert out["transmission"].shape == (1, 3, 32, 32)
    assert (out["d_hat"] is None) == (not model.config.use_hallucination)


def test_student_needs_encoder_or_hallucination():
    with pytest.raises(ValueError, match="encoder or its hallucination"):
        create_model("student-nano", use_encoder=False, use_hallucination=False)


def test_student_preset_sizes_are_ordered():
    sizes = [count_params(create_model(n)) for n in ("student-nano", "student-small", "student-base")]
    assert 0.1e6 <= sizes[0] <= 0.5e6
    assert sizes[0] < sizes[1] < sizes[2]


@pytest.mark.parametrize("n_frames", [3, 5])
@pytest.mark.parametrize(
    "switches",
    [dict(), dict(use_mkl=False), dict(use_decouple=False), dict(use_flow=False), dict(use_fusion=False)],
)
def test_teacher_shapes_for_every_switch(n_frames, switches):
    model = create_model("teacher-small", **switches)
    frames = torch.rand(2, n_frames, 3, 32, 48)
    out = model(frames)
    assert out["transmission"].shape == (2, 3, 32, 48)
    assert out["reflection"].shape == (2, 3, 32, 48)
    assert [d.shape[1] for d in out["d"]] == list(model.config.dyn_channels)
    assert [d.shape[-2:] for d in out["d"]] == [(16, 24), (8, 12), (4, 6)]
    has_flow = model.config.use_mkl and model.config.use_flow
    assert ("flows_T" in out) == has_flow
    if has_flow:
        for s, f in enumerate(out["flows_T"]):
            assert f.shape == (2, n_frames, 2, 16 >> s, 24 >> s)
            assert torch.count_nonzero(f[:, n_frames // 2]) == 0  # the middle frame does not move
    has_layers = model.config.use_mkl and model.config.use_decouple
    assert ("layers_T" in out) == has_layers


def test_teacher_global_colour_path_starts_at_zero_and_learns():
    """use_global: the students' image-level colour transform on the teacher's middle frame. Zero at
    start (the same output as the plain teacher with the same weights); once set, a pure gain on a flat
    grey sequence changes T by exactly that gain, and its parameters get gradients."""
    torch.manual_seed(0)
    plain = create_model("teacher-small").eval()
    glob = create_model("teacher-small", use_global=True).eval()
    missing, unexpected = glob.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("colour.") for k in missing)
    frames = torch.rand(1, 5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(glob(frames)["transmission"], plain(frames)["transmission"])
    out = glob.train()(frames)
    out["transmission"].mean().backward()
    assert glob.colour.mlp[-1].bias.grad.abs().sum() > 0
    with torch.no_grad():
        glob.colour.mlp[-1].bias[:9] = torch.tensor([-0.5, 0, 0, 0, -0.5, 0, 0, 0, -0.5])  # gain 0.5 on every channel
        grey = torch.full((1, 5, 3, 32, 32), 0.6)
        torch.testing.assert_close(glob.eval()(grey)["transmission"] - plain(grey)["transmission"], torch.full((1, 3, 32, 32), -0.3))


def test_teacher_output_is_invariant_to_neighbour_order():
    model = create_model("teacher-small").eval()
    frames = torch.rand(1, 5, 3, 32, 32)
    swapped = frames[:, [4, 3, 2, 1, 0]]
    with torch.no_grad():
        a, b = model(frames)["d"], model(swapped)["d"]
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    model = create_model("student-nano", use_kt=False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    path = save_checkpoint(model, tmp_path / "s.safetensors", step=7, data="unit test")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["model"] == "student-nano" and meta["step"] == 7 and meta["config"]["use_kt"] is False
    loaded = load_checkpoint(path)
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    # The weights file alone is enough (config in the safetensors header).
    path.with_suffix(".json").unlink()
    assert load_checkpoint(path).config.use_kt is False
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_checkpoints(tmp_path):
    teacher = save_checkpoint(create_model("teacher-small"), tmp_path / "t.safetensors")
    with pytest.raises(DereflectError, match="expected a student checkpoint, got 'teacher-small'"):
        load_checkpoint(teacher, expect="student")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DereflectError, match="junk.safetensors: not a readable safetensors checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(DereflectError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(DereflectError, match="unknown config key"):
        create_model("student-nano", widht=3)
    with pytest.raises(DereflectError, match="unknown model 'student-huge'"):
        create_model("student-huge")
