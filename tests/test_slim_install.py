"""The slim runtime install: `pip install dereflect` runs `dereflect remove` without torch.

Each check runs in a fresh interpreter (sys.modules starts empty): the real CLI entry point and
`runtime.load("default")` on the shipped artifacts, then a look at sys.modules. Once as this
install is (torch installed but never imported), once as the slim install is (torch, the ONNX
converters, scikit-image, scipy, PyYAML, safetensors, OpenVINO and the demo server made
unimportable: `sys.modules[name] = None` is what Python's import system and importlib.util.find_spec
read as "not installed"): remove still works on ONNX Runtime INT8, and a path that needs an extra
says which, in one line. pyproject.toml keeps them out of the core dependencies, and `make` still
installs everything.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the slim install does not have (top-level module names).
NOT_IN_SLIM = (
    "torch",
    "torchvision",
    "safetensors",
    "onnx",
    "onnxscript",
    "onnx_ir",
    "onnxslim",
    "onnxconverter_common",
    "skimage",
    "scipy",
    "yaml",
    "openvino",
    "nncf",
    "starlette",
    "uvicorn",
    "tensorboard",
)
#: Never imported by `dereflect remove` on an artifact, slim or not.
HEAVY = ("torch", "onnx", "onnxscript", "onnxslim", "onnxconverter_common", "skimage", "scipy", "yaml", "safetensors", "nncf")

SCRIPT = r"""
import json, sys
BLOCK = {block!r}
for name in BLOCK:
    sys.modules[name] = None  # "not installed", for imports and for importlib.util.find_spec
from dereflect.cli import main

def cli(argv):
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0

result = {{"remove": cli({argv!r})}}
if {api!r}:
    import numpy as np
    from dereflect.runtime import load
    session = load("default")
    result["api"] = [session.summary(), list(session.run(np.zeros((40, 56, 3), np.uint8)).shape)]
loaded = [m for m in {heavy!r} if sys.modules.get(m) is not None]
result["imported"] = loaded
print("RESULT " + json.dumps(result))
"""


def run_isolated(argv: list[str], block: tuple[str, ...] = (), api: bool = False) -> tuple[dict, str, str]:
    code = SCRIPT.format(block=block, argv=argv, api=api, heavy=HEAVY + block)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    return json.loads(line[len("RESULT ") :]), proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory, photo) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("slim") / "photo.jpg"
    Image.fromarray(photo[:200, :300]).save(path, quality=95)
    return path


def test_remove_never_imports_torch(photo_file, tmp_path):
    result, stdout, stderr = run_isolated(["remove", str(photo_file), "-o", str(tmp_path / "out")], api=True)
    assert result["remove"] == 0, stderr
    assert result["imported"] == [], f"`dereflect remove` imported {result['imported']}"
    assert result["api"][1] == [40, 56, 3] and "int8" in result["api"][0]
    assert (tmp_path / "out" / "photo.jpg").is_file()


def test_slim_install_removes_reflections(photo_file, tmp_path):
    result, stdout, stderr = run_isolated(["remove", str(photo_file), "-o", str(tmp_path / "out")], block=NOT_IN_SLIM, api=True)
    assert result["remove"] == 0, stderr
    assert stdout.startswith("backend: onnxruntime int8 (student-nano, parity passed) | "), stdout
    assert result["api"][0] == "onnxruntime int8 (student-nano, parity passed)"
    assert result["imported"] == []
    assert (tmp_path / "out" / "photo.jpg").is_file()


@pytest.mark.parametrize(
    "argv, extra",
    [
        (["remove", "PHOTO", "-o", "OUT", "--backend", "torch"], "torch"),
        (["remove", "PHOTO", "-o", "OUT", "--model", "student-mnv2-hq"], "torch"),
        (["remove", "PHOTO", "-o", "OUT", "--backend", "openvino"], "openvino"),
        (["export", "dereflect/weights/student-nano.safetensors", "--out", "OUT"], "export"),
        (["train", "teacher", "--data", "OUT", "--out", "OUT/run"], "train"),
    ],
)
def test_paths_that_need_an_extra_say_which(argv, extra, photo_file, tmp_path):
    argv = [str(photo_file) if a == "PHOTO" else a.replace("OUT", str(tmp_path / "out")) for a in argv]
    result, stdout, stderr = run_isolated(argv, block=NOT_IN_SLIM)
    assert result["remove"] == 1
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"pip install 'dereflect[{extra}]'" in lines[0], stderr
    assert "Traceback" not in stderr


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_core_dependencies_are_the_runtime_only():
    project = _pyproject()["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert core == {"numpy", "pillow", "typer", "rich", "onnxruntime"}, core
    extras = project["optional-dependencies"]
    assert "torch" in {_name(r) for r in extras["torch"]}
    for name in ("export", "train"):
        assert "dereflect[torch]" in extras[name]
    assert {"onnx", "onnxscript", "onnxslim", "onnxconverter-common"} <= {_name(r) for r in extras["export"]}
    assert {"starlette", "uvicorn"} <= {_name(r) for r in extras["demo"]}
    everything = re.search(r"\[(.*)\]", extras["all"][0]).group(1).split(",")
    assert {"train", "export", "openvino", "demo", "dev"} <= set(everything)
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]["dereflect"]
    assert "weights/*-artifacts/**/*" in package_data


def test_make_installs_everything():
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[all]'" in makefile
