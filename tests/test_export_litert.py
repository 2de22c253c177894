"""The LiteRT row (`tflite`): student-nano converted by litert-torch (NHWC IO, fixed shape), int8 by
ai-edge-quantizer, gated against PyTorch, run through ai-edge-litert's real interpreter by the
runtime backend and the tiler, and measured by the benchmark. Skipped, with the reason, where the
LiteRT packages are not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dereflect.errors import DereflectError
from dereflect.export.formats import FORMATS_BY_NAME, format_for_path, format_status
from dereflect.export.manifest import load_manifest_for
from dereflect.export.pipeline import Exporter, ExportOptions

STATUS = format_status("tflite")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not STATUS.can_build, reason=STATUS.build_reason or "litert missing")]
SIZE = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory, ckpt) -> dict[str, object]:
    out = tmp_path_factory.mktemp("tflite")
    results = {}
    for precision in ("fp32", "int8"):
        opts = ExportOptions(precision=precision, size=SIZE, val_count=4, calib_count=8)
        [results[precision]] = Exporter(ckpt, out, opts, log=lambda _: None).run([FORMATS_BY_NAME["tflite"]])
    return results


def test_row_in_the_format_table() -> None:
    fmt = FORMATS_BY_NAME["tflite"]
    assert fmt.backends == ("litert",) and fmt.extra == "mobile" and fmt.precisions == ("fp32", "int8")
    assert format_for_path(Path("student-nano-fp32.tflite")) is fmt
    assert "PT2E" in fmt.description  # the row says why int8 is not litert-torch's own quantizer


def test_fp32_nhwc_fixed_shape_passes_parity(built) -> None:
    r = built["fp32"]
    assert r.status == "passed", (r.message, r.parity)
    assert r.parity["metrics"]["max_abs_diff"] <= 1e-4
    m = load_manifest_for(r.artifact, verify=True)
    assert (m["format"], m["runtime"]) == ("tflite", "litert")
    assert m["inputs"][0]["shape"] == [1, 3, SIZE, SIZE] and m["constraints"]["fixed_hw"] == [SIZE, SIZE]  # what the backend takes
    lt = m["litert"]
    assert lt["layout"] == "NHWC"  # what the file itself takes: an Android bitmap's order
    assert lt["io"]["input"]["shape"] == [1, SIZE, SIZE, 3] and lt["io"]["input"]["dtype"] == "float32"
    assert lt["io"]["output"]["shape"] == [1, SIZE, SIZE, 3]


def test_int8_dynamic_range_within_budget(built) -> None:
    r, fp32 = built["int8"], built["fp32"]
    assert r.status == "passed", (r.message, r.parity)
    assert r.parity["metrics"]["ssim_drop"] <= 0.01 and r.parity["metrics"]["max_abs_diff"] > 1e-5
    m = load_manifest_for(r.artifact, verify=True)
    assert m["quantization"]["tool"] == "ai-edge-quantizer dynamic_wi8_afp32"
    assert "tfl.pad" in m["quantization"]["note"]  # why not litert-torch's PT2E int8, in one line
    assert m["litert"]["io"]["input"]["dtype"] == "float32"
    assert r.size_bytes < 0.4 * fp32.size_bytes  # int8 weights


def test_runtime_backend_runs_tiles_like_torch(built, ckpt) -> None:
    from dereflect.runtime import load
    from dereflect.runtime.tiling import run_tiled

    session = load(built["fp32"].artifact)
    assert session.backend == "litert" and session.impl.fixed == (SIZE, SIZE)
    assert "NHWC float32 IO" in session.impl.detail
    torch_session = load(ckpt, backend="torch")
    rng = np.random.default_rng(2)
    tile = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert np.abs(session.run(tile).astype(int) - torch_session.run(tile).astype(int)).max() <= 1
    photo = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    plan = session.plan(*photo.shape[:2])
    assert plan.count > 1 and (plan.tile_h, plan.tile_w) == (SIZE, SIZE)
    via_tflite = session.run(photo)
    assert np.abs(via_tflite.astype(int) - run_tiled(torch_session.impl.infer, photo, plan).astype(int)).max() <= 1
    with pytest.raises(DereflectError, match="takes 64x64 inputs only"):
        session.impl.infer(np.zeros((1, 3, 32, 32), np.float32))


def test_bench_has_rows_for_both_precisions(built) -> None:
    """Pairs of 96 px: the fixed 64x64 artifact runs them as overlapping tiles, and the bench holds
    it to PyTorch on the same tiles (the conversion's error, not the tiling's)."""
    from dereflect.bench.runner import BenchOptions, run_bench

    folder = built["fp32"].artifact.parent
    result = run_bench(folder, BenchOptions(sizes=(SIZE,), runs=2, warmup=1, time_cap_s=5.0, synth_size=96, thumbs=0), log=lambda _: None)
    rows = {r["precision"]: r for r in result.rows if r["format"] == "tflite"}
    assert set(rows) == {"fp32", "int8"}
    for row in rows.values():
        assert row["status"] == "passed", row.get("reason")
        assert row["backend"] == "litert/cpu" and row["latency_ms"] > 0
        assert row["parity_reference"].endswith("on the same 64x64 tiles")
    assert rows["fp32"]["max_abs_diff"] <= 1e-4


def test_corrupt_model_is_one_clear_error(tmp_path) -> None:
    from dereflect.runtime.backends.litert_backend import LiteRTBackend

    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00" * 1024)
    with pytest.raises(DereflectError, match="LiteRT cannot load this model") as info:
        LiteRTBackend(bad)
    assert "broken.tflite" in str(info.value)


def test_fixed_shape_option_names_and_records_the_shape(ckpt, tmp_path) -> None:
    """`--fixed-shape 64x96` (a non-square tile): the artifact carries the shape in its name and
    manifest, the file takes (1, 64, 96, 3), and the gate compares at that shape."""
    opts = ExportOptions(precision="fp32", size=SIZE, val_count=2, fixed_shapes=((64, 96),))
    [r] = Exporter(ckpt, tmp_path, opts, log=lambda _: None).run([FORMATS_BY_NAME["tflite"]])
    assert r.status == "passed" and r.artifact.name == "student-nano-64x96-fp32.tflite"
    m = load_manifest_for(r.artifact)
    assert m["constraints"]["fixed_hw"] == [64, 96] and m["litert"]["io"]["input"]["shape"] == [1, 64, 96, 3]


def test_running_a_tflite_imports_no_torch(built) -> None:
    """The LiteRT backend needs only ai-edge-litert: a phone-style artifact runs on the slim install."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\nfrom dereflect.runtime import load\n"
        f"load({str(built['int8'].artifact)!r}).run(np.zeros((80, 80, 3), np.uint8))\n"
        "print(sorted(m for m in ('torch', 'litert_torch', 'tensorflow', 'jax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
