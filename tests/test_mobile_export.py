"""The MobileNetV2 students through export and the runtime: BatchNorm folded away, the manifest records
their multiple of 16, and the runtime pads a photo that is not a multiple of 16 (an artifact that said 8
failed on OpenVINO with a Concat shape error)."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest

from dereflect.export.formats import FORMATS_BY_NAME
from dereflect.export.pipeline import Exporter, ExportOptions
from dereflect.models import save_checkpoint
from dereflect.models.reference import reference_student
from dereflect.runtime import load


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnv2")
    model = reference_student("student-mnv2-rt", seed=3)
    ckpt = save_checkpoint(model, root / "student-mnv2-rt.safetensors")
    opts = ExportOptions(precision="fp32", size=64, val_count=4, calib_count=8)
    results = Exporter(ckpt, root / "art", opts, log=lambda _: None).run([FORMATS_BY_NAME["onnx"]])
    assert [r.status for r in results] == ["passed"]
    return ckpt, root / "art"


def test_graph_has_no_batchnorm_and_manifest_says_16(exported):
    _, art = exported
    graph = onnx.load(str(art / "student-mnv2-rt-fp32.onnx"))
    ops = collections.Counter(n.op_type for n in graph.graph.node)
    assert "BatchNormalization" not in ops and ops["Conv"] > 40
    manifest = json.loads((art / "student-mnv2-rt-fp32.onnx.json").read_text())
    assert manifest["constraints"]["multiple_of"] == 16 and manifest["parity"]["status"] == "passed"


def test_runtime_pads_to_16_and_matches_torch(exported):
    ckpt, art = exported
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (72, 104, 3), dtype=np.uint8)  # 104 = 6.5 x 16
    via_torch = load(ckpt, backend="torch").run(photo)
    via_ort = load(art / "student-mnv2-rt-fp32.onnx", backend="onnxruntime").run(photo)
    assert via_ort.shape == photo.shape
    assert np.abs(via_ort.astype(int) - via_torch.astype(int)).max() <= 1
    assert np.abs(via_torch.astype(int) - photo.astype(int)).mean() > 1  # the student does change the photo
