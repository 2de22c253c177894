"""The ExecuTorch row (`pte`): student-nano exported to .pte with the XNNPACK delegate (fp32 and PT2E
int8), gated against PyTorch, run through ExecuTorch's real Python runtime by the runtime backend and
the tiler, and measured by the benchmark. Skipped, with the reason, where executorch is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dereflect.errors import DereflectError, UsageError
from dereflect.export.formats import FORMATS_BY_NAME, format_for_path, format_status, resolve_formats
from dereflect.export.manifest import load_manifest_for
from dereflect.export.pipeline import Exporter, ExportOptions

STATUS = format_status("pte")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not STATUS.can_build, reason=STATUS.build_reason or "executorch missing")]
SIZE = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory, ckpt) -> dict[str, object]:
    """fp32 and int8 .pte of the perturbed student-nano at 64x64 (8 calibration images, 4 validation pairs)."""
    out = tmp_path_factory.mktemp("pte")
    results = {}
    for precision in ("fp32", "int8"):
        opts = ExportOptions(precision=precision, size=SIZE, val_count=4, calib_count=8)
        [results[precision]] = Exporter(ckpt, out, opts, log=lambda _: None).run([FORMATS_BY_NAME["pte"]])
    return results


def test_row_in_the_format_table() -> None:
    fmt = FORMATS_BY_NAME["pte"]
    assert fmt.backends == ("executorch",) and fmt.extra == "mobile" and fmt.precisions == ("fp32", "int8")
    assert format_for_path(Path("student-nano-int8.pte")) is fmt
    with pytest.raises(UsageError, match="does not support fp16"):
        resolve_formats("pte", "fp16")
    build, skipped = resolve_formats("all", "fp16")
    assert "pte" not in {f.name for f in build} and any(f.name == "pte" for f, _ in skipped)


def test_fp32_passes_parity_whole_graph_on_xnnpack(built) -> None:
    r = built["fp32"]
    assert r.status == "passed", (r.message, r.parity)
    assert r.parity["metrics"]["max_abs_diff"] <= 1e-4 and r.parity["metrics"]["images"] == 4
    m = load_manifest_for(r.artifact, verify=True)
    assert (m["format"], m["runtime"], m["precision"]) == ("pte", "executorch", "fp32")
    assert m["constraints"]["fixed_hw"] == [SIZE, SIZE] and m["inputs"][0]["shape"] == [1, 3, SIZE, SIZE]
    et = m["executorch"]
    assert et["delegate"] == "XnnpackBackend" and et["delegate_calls"] == 1 and et["portable_ops"] == {}  # one partition
    assert et["shapes"] == {"mode": "fixed", "sizes_hw": [[SIZE, SIZE]], "batch": 1}
    assert m["source"]["step"] == 7 and m["tools"]["python"]


def test_int8_quantized_and_within_budget(built) -> None:
    r, fp32 = built["int8"], built["fp32"]
    assert r.status == "passed", (r.message, r.parity)
    assert r.parity["metrics"]["ssim_drop"] <= 0.01
    assert r.parity["metrics"]["max_abs_diff"] > 1e-4  # really quantized
    m = load_manifest_for(r.artifact, verify=True)
    assert "XNNPACKQuantizer" in m["quantization"]["tool"] and m["quantization"]["calibration_images"] == 8
    assert m["calibration"]["images"] == 8 and m["executorch"]["delegate_calls"] == 1
    assert r.size_bytes < 0.5 * fp32.size_bytes  # int8 weights


def test_runtime_backend_runs_tiles_like_torch(built, ckpt) -> None:
    """load() picks the ExecuTorch backend for a .pte; one tile equals PyTorch, and a larger photo is
    cut into fixed 64x64 tiles whose blend equals PyTorch run on the very same tiles."""
    from dereflect.runtime import load
    from dereflect.runtime.tiling import run_tiled

    session = load(built["fp32"].artifact)
    assert session.backend == "executorch" and session.impl.fixed == (SIZE, SIZE)
    assert "XNNPACK" in session.impl.detail
    torch_session = load(ckpt, backend="torch")
    rng = np.random.default_rng(1)
    tile = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert np.abs(session.run(tile).astype(int) - torch_session.run(tile).astype(int)).max() <= 1
    photo = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    plan = session.plan(*photo.shape[:2])
    assert plan.count > 1 and (plan.tile_h, plan.tile_w) == (SIZE, SIZE)
    via_pte = session.run(photo)
    via_torch = run_tiled(torch_session.impl.infer, photo, plan)
    assert via_pte.shape == photo.shape and np.abs(via_pte.astype(int) - via_torch.astype(int)).max() <= 1


def test_bench_has_rows_for_both_precisions(built, tmp_path) -> None:
    from dereflect.bench.runner import BenchOptions, run_bench

    folder = built["fp32"].artifact.parent
    result = run_bench(folder, BenchOptions(sizes=(SIZE,), runs=2, warmup=1, time_cap_s=5.0, synth_size=SIZE, thumbs=0), log=lambda _: None)
    rows = {(r["format"], r["precision"]): r for r in result.rows if r["format"] == "pte"}
    assert set(rows) == {("pte", "fp32"), ("pte", "int8")}
    for row in rows.values():
        assert row["status"] == "passed", row.get("reason")
        assert row["backend"] == "executorch/cpu" and row["latency_ms"] > 0 and row["model_input"] == [1, 3, SIZE, SIZE]


def test_corrupt_program_is_one_clear_error(tmp_path) -> None:
    from dereflect.runtime.backends.executorch_backend import ExecuTorchBackend

    bad = tmp_path / "broken.pte"
    bad.write_bytes(b"not a flatbuffer" * 64)
    with pytest.raises(DereflectError, match="ExecuTorch cannot load this program") as info:
        ExecuTorchBackend(bad)
    assert "broken.pte" in str(info.value)


def test_int8_calibration_at_another_fixed_shape(ckpt, tmp_path) -> None:
    """ExecuTorch int8 at a fixed shape other than --size calibrates on the same photos at that shape."""
    opts = ExportOptions(precision="int8", size=SIZE, calib_count=4)
    with Exporter(ckpt, tmp_path, opts, log=lambda _: None) as exporter:
        assert exporter.calibration_at((SIZE, SIZE)) is exporter.calibration
        other = exporter.calibration_at((64, 96)).images
        assert other.shape == (4, 3, 64, 96) and other.dtype == np.float32
        assert 0.0 <= other.min() and other.max() <= 1.0
