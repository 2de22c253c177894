"""The default fast path: the shipped student's exported artifacts (dereflect/weights/<name>-artifacts/).

What ships is what its manifests say (sha256 of every artifact, parity passed, built from the
shipped checkpoint, each file under 10 MB, ship.json consistent), and it still matches the torch
checkpoint within each artifact's parity budget on real photos (scikit-image's, at their own
odd sizes, through the runtime's padding). Then the choice: `load("default")` and `dereflect
remove` with no options take the fastest verified artifact and say which; `--backend torch` and
`--precision` choose explicitly; a failed or stale artifact is never picked; with no runnable
artifact the checkpoint runs on torch, with the reason in the description.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from dereflect.errors import DereflectError, UsageError
from dereflect.export.formats import format_status, runnable_by
from dereflect.export.manifest import find_artifacts, manifest_path, sha256_artifact, sha256_file
from dereflect.export.parity import DEFAULT_BUDGETS
from dereflect.runtime import load, resolve

NAME = resolve.DEFAULT_NAME
WEIGHTS = resolve.WEIGHTS_DIR
FOLDER = WEIGHTS / f"{NAME}{resolve.ARTIFACTS_SUFFIX}"
CHECKPOINT = WEIGHTS / f"{NAME}.safetensors"
MAX_FILE_BYTES = 10 * 1024 * 1024
HAS_OPENVINO = format_status("openvino").can_run
FAST = "openvino" if HAS_OPENVINO else "onnxruntime"


def shipped() -> list[tuple[Path, dict]]:
    return find_artifacts(FOLDER)


def test_the_default_student_ships_its_artifacts():
    found = {(m["format"], m["precision"]) for _, m in shipped()}
    # ONNX INT8 is the slim install's fast path; OpenVINO INT8 the fastest with openvino; fp32 for --precision fp32
    assert {("onnx", "int8"), ("openvino", "int8"), ("onnx", "fp32"), ("openvino", "fp32")} <= found, found


@pytest.mark.parametrize("artifact", [a.name for a, _ in find_artifacts(FOLDER)] if FOLDER.is_dir() else [])
def test_shipped_artifact_matches_its_manifest(artifact):
    path = FOLDER / artifact
    manifest = json.loads(manifest_path(path).read_text())
    assert sha256_artifact(path) == manifest["artifact_sha256"]
    assert manifest["parity"]["status"] == "passed", manifest["parity"]
    assert manifest["source"]["sha256"] == sha256_file(CHECKPOINT), "stale: re-run tools/ship_artifacts.py"
    assert manifest["source"]["model"] == NAME
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    assert files and all(f.stat().st_size < MAX_FILE_BYTES for f in files)


def test_ship_index_lists_exactly_what_ships():
    index = json.loads((FOLDER / "ship.json").read_text())
    assert index["model"] == NAME and index["checkpoint_sha256"] == sha256_file(CHECKPOINT)
    listed = {a["artifact"]: a for a in index["artifacts"]}
    on_disk = {a.name: m for a, m in shipped()}
    assert set(listed) == set(on_disk)
    for name, entry in listed.items():
        assert entry["sha256"] == on_disk[name]["artifact_sha256"] and entry["parity"]["status"] == "passed"
    assert "tools/ship_artifacts.py --model " + NAME in index["command"]


def _real_photos() -> list[np.ndarray]:
    """Real photos at their own (odd) sizes: padding and any tiling run as for a user's photo."""
    from skimage import data

    return [np.ascontiguousarray(data.coffee()), np.ascontiguousarray(data.chelsea()[:, :, :3]), np.ascontiguousarray(data.astronaut())]


def _through_glass(photo: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The photo with a soft reflection of another real photo on top (float32 in [0, 1]): the photo is the ground truth."""
    from PIL import Image, ImageFilter

    h, w = photo.shape[:2]
    reflection = np.asarray(Image.fromarray(other).resize((w, h)).filter(ImageFilter.GaussianBlur(3)), np.float32) / 255
    return np.clip(0.85 * photo.astype(np.float32) / 255 + 0.3 * reflection, 0, 1).astype(np.float32)


def _ssim(truth: np.ndarray, out: np.ndarray) -> float:
    from dereflect import metrics

    return float(metrics.ssim(truth.astype(np.float64) * 255, np.clip(out, 0, 1).astype(np.float64) * 255))


@pytest.fixture(scope="module")
def torch_outputs():
    photos = _real_photos()
    inputs = [_through_glass(p, photos[(i + 1) % len(photos)]) for i, p in enumerate(photos)]
    session = load(CHECKPOINT, backend="torch")
    return photos, inputs, [session.run(x) for x in inputs]


@pytest.mark.parametrize("artifact", [a.name for a, _ in find_artifacts(FOLDER)] if FOLDER.is_dir() else [])
def test_shipped_artifact_matches_torch_on_real_photos(artifact, torch_outputs):
    """Each artifact on the backend the runtime would give it, against the checkpoint on torch, within its manifest's budget."""
    path = FOLDER / artifact
    manifest = json.loads(manifest_path(path).read_text())
    backend = runnable_by(manifest["format"])[0]
    if not format_status(manifest["format"]).can_run:
        pytest.skip(f"{backend} is not installed")
    budget = DEFAULT_BUDGETS[manifest["precision"]]
    assert manifest["parity"]["budget"] == budget.as_dict()  # the shipped gate used the default budget
    session = load(path, backend=backend)
    photos, inputs, references = torch_outputs
    for photo, x, ref in zip(photos, inputs, references):
        out = session.run(x)
        assert out.shape == ref.shape and np.isfinite(out).all()
        truth = photo.astype(np.float32) / 255
        if budget.max_abs_diff is not None:
            assert float(np.abs(out - ref).max()) <= budget.max_abs_diff
        if budget.max_ssim_drop is not None:
            drop = _ssim(truth, ref) - _ssim(truth, out)
            assert drop <= budget.max_ssim_drop, f"{artifact} on a {photo.shape[1]}x{photo.shape[0]} photo: SSIM drop {drop:.4f}"
        psnr = 10 * np.log10(1 / max(float(np.mean((out - ref) ** 2)), 1e-12))
        assert psnr > 35, f"{artifact}: PSNR vs torch {psnr:.1f} dB"


def test_default_loads_the_fastest_verified_artifact():
    session = load("default")
    assert session.backend == FAST and session.model.precision == "int8"
    assert session.model.path.parent == FOLDER and session.model.manifest["parity"]["status"] == "passed"
    assert session.summary() == f"{FAST} int8 ({NAME}, parity passed)"
    assert load(NAME).model.path == session.model.path  # by name: the same choice


def test_explicit_backend_and_precision_still_choose():
    torch_session = load("default", backend="torch")
    assert torch_session.backend == "torch" and torch_session.model.path == CHECKPOINT
    assert torch_session.summary() == f"torch fp32 ({NAME} checkpoint)"
    ort = load("default", backend="onnxruntime")
    assert ort.backend == "onnxruntime" and ort.model.path.name == f"{NAME}-int8.onnx"
    fp32 = load("default", precision="fp32")
    assert fp32.backend == FAST and fp32.model.precision == "fp32"
    with pytest.raises(DereflectError, match="no fp16 artifact here"):
        load("default", precision="fp16")
    with pytest.raises(UsageError, match="--backend torch runs the fp32 checkpoint"):
        load("default", backend="torch", precision="int8")


def test_remove_with_no_options_prints_the_fast_backend(photo, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "photo.jpg"
    Image.fromarray(photo).save(src, quality=95)
    code, stdout, err = run_cli(["remove", str(src), "-o", str(tmp_path / "out")], capsys)
    assert code == 0, err
    first = stdout.splitlines()[0]
    assert first.startswith(f"backend: {FAST} int8 ({NAME}, parity passed) | "), first
    assert (tmp_path / "out" / "photo.jpg").is_file() and f"s on {FAST})" in stdout
    code, stdout, err = run_cli(["remove", str(src), "-o", str(tmp_path / "t"), "--backend", "torch"], capsys)
    assert code == 0 and stdout.startswith(f"backend: torch fp32 ({NAME} checkpoint) | ")


@pytest.fixture()
def weights(monkeypatch, tmp_path) -> Path:
    """A copy of the shipped default (checkpoint + artifacts) as the package's weights folder."""
    shutil.copy(CHECKPOINT, tmp_path / CHECKPOINT.name)
    shutil.copy(CHECKPOINT.with_suffix(".json"), tmp_path / CHECKPOINT.with_suffix(".json").name)
    shutil.copytree(FOLDER, tmp_path / FOLDER.name)
    monkeypatch.setattr(resolve, "WEIGHTS_DIR", tmp_path)
    return tmp_path


def _set_parity(artifact: Path, status: str) -> None:
    path = manifest_path(artifact)
    manifest = json.loads(path.read_text())
    manifest["parity"]["status"] = status
    path.write_text(json.dumps(manifest))


def test_a_failed_gate_is_never_picked(weights):
    folder = weights / FOLDER.name
    for artifact, manifest in find_artifacts(folder):
        if manifest["precision"] == "int8":
            _set_parity(artifact, "failed")
    session = load("default")
    assert session.model.precision == "fp32" and session.backend == FAST  # the next fastest that passed
    with pytest.raises(DereflectError, match="failed its parity gate"):
        load("default", precision="int8")


def test_stale_artifacts_are_skipped_and_torch_runs(weights, ckpt):
    shutil.copy(ckpt, weights / CHECKPOINT.name)  # other weights than the artifacts were built from
    session = load("default")
    assert session.backend == "torch" and session.model.kind == "checkpoint"
    assert "built from other weights" in session.describe() and "tools/ship_artifacts.py" in session.describe()
    with pytest.raises(DereflectError, match="stale"):
        load("default", backend="onnxruntime")


def test_nothing_runnable_falls_back_to_the_checkpoint(weights, monkeypatch):
    real = resolve.backend_problem
    monkeypatch.setattr(resolve, "backend_problem", lambda name: "not here" if name != "torch" else real(name))
    session = load("default")
    assert session.backend == "torch" and "no shipped artifact runs here" in session.describe()


def test_a_changed_artifact_is_refused(weights):
    chosen = load("default").model.path
    target = chosen if chosen.is_file() else next(chosen.glob("*.bin"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DereflectError, match="sha256 mismatch"):
        load("default")


def test_a_student_without_artifacts_runs_its_checkpoint(weights):
    shutil.rmtree(weights / FOLDER.name)
    assert load("default").backend == "torch"
    with pytest.raises(UsageError, match="no exported artifacts are shipped"):
        load("default", precision="int8")


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'dereflect[openvino]')")
def test_openvino_runs_tiles_in_flight_with_the_same_result_as_one_by_one():
    """OpenVINO's infer_stream (THROUGHPUT streams, several tiles at once) gives every tile's result in
    input order, identical to running the tiles one by one, and a photo through it equals the tile-by-tile run."""
    from skimage import data

    from dereflect.runtime import tiling

    session = load("default", "openvino")
    rng = np.random.default_rng(0)
    tiles = [rng.random((1, 3, 64 + 8 * k, 96), dtype=np.float32) for k in range(5)]
    streamed = list(session.impl.infer_stream(iter(tiles)))
    assert [s.shape for s in streamed] == [t.shape for t in tiles]
    for tile, result in zip(tiles, streamed):
        np.testing.assert_array_equal(result, session.impl.infer(tile))
    photo = data.astronaut()  # 512x512 in 3x3 tiles of 192
    plan = tiling.plan_tiles(512, 512, tile=192, overlap=64)
    assert plan.count > 4
    one_by_one = tiling.run_tiled(session.impl.infer, photo, plan)
    np.testing.assert_array_equal(tiling.run_tiled(session.impl.infer, photo, plan, stream=session.impl.infer_stream), one_by_one)
    np.testing.assert_array_equal(session.run(photo, tile=192), tiling.run_tiled(session.impl.infer, photo, session.plan(512, 512, 192)))


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'dereflect[openvino]')")
def test_running_openvino_skips_its_converter_and_the_exporter_still_gets_it():
    """The runtime imports openvino without its model converter (and the converter's telemetry client),
    in a fresh interpreter; afterwards `openvino.convert_model` still works for the exporter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dereflect.runtime import load\n"
        "session = load('default', 'openvino')\n"
        "assert session.backend == 'openvino'\n"
        "print(sorted(m for m in ('openvino.tools.ovc', 'openvino_telemetry', 'http.client') if m in sys.modules))\n"
        "import openvino\n"
        "from openvino.tools.ovc import convert_model\n"
        "print(openvino.convert_model is convert_model)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "True", out


def test_default_tiles_with_the_overlap_measured_for_the_shipped_student():
    """ship.json records the tile overlap tools/ship_artifacts.py measured; the default session tiles with
    it, its tiled output still matches the whole-image run within the recorded seam budget (on the fast
    artifact, not just the fp32 one it was measured on), and an explicit overlap wins."""
    from PIL import Image
    from skimage import data

    index = json.loads((FOLDER / "ship.json").read_text())
    overlap, check = index["tile_overlap"], index["tile_overlap_check"]
    assert overlap in (64, 96, 128) and check["by_overlap"][str(overlap)]["max_levels"] <= check["max_levels_allowed"]
    session = load("default")
    assert session.overlap == overlap
    assert load("default", overlap=128).overlap == 128
    photo = np.asarray(Image.fromarray(data.coffee()).resize((1024, 768), Image.BICUBIC))
    tiled = load("default", tile=256).run(photo).astype(int)
    whole = load("default", max_pixels=1024 * 768).run(photo).astype(int)
    assert np.abs(tiled - whole).max() <= check["max_levels_allowed"] + 1  # INT8 rounding may add a level at a seam


def test_remove_from_a_shell_exits_fast_with_everything_written(photo, tmp_path):
    """`dereflect remove` as a console command ends with os._exit (cli.main: no interpreter teardown):
    the output is complete and equals the in-process run's, stdout arrives in full, and a failure
    still exits 1 with its one line on stderr."""
    import os
    import subprocess
    import sys

    from PIL import Image

    src = tmp_path / "photo.png"
    Image.fromarray(photo).save(src)
    entry = (
        "import atexit, sys; from dereflect.cli import main; sys.argv[0] = 'dereflect'; "
        "atexit.register(lambda: print('interpreter teardown ran')); main()"
    )
    done = subprocess.run([sys.executable, "-c", entry, "remove", str(src), "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"backend: {FAST} int8") and "photo.png -> " in done.stdout and done.stdout.endswith("\n")
    assert "interpreter teardown ran" not in done.stdout  # os._exit: no atexit, no teardown
    written = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    assert np.array_equal(written, load("default").run(photo))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    done = subprocess.run([sys.executable, "-c", entry, "remove", str(bad), "-o", str(tmp_path / "o2")], capture_output=True, text=True)
    assert done.returncode == 1 and str(bad) in done.stderr and done.stderr.count("\n") == 1, done.stderr
    env = {**os.environ, "DEREFLECT_NO_FAST_EXIT": "1"}  # the opt-out (profilers, coverage): a normal exit
    done = subprocess.run(
        [sys.executable, "-c", entry, "remove", str(src), "-o", str(tmp_path / "o3")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and done.stdout.rstrip().endswith("interpreter teardown ran"), done.stdout
