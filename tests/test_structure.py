"""The shape of the package: no import cycles, every module importable on its own, and one
format table that export, the runtime and the benchmark all read (a new format or backend is
one row plus one module)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from dereflect.export.formats import CHECKPOINT, FORMATS, PRECISIONS, format_for_path, runnable_by
from dereflect.export.pipeline import Exporter
from dereflect.runtime.backends import BACKENDS, REGISTRY, Backend, get_backend, speed_rank
from dereflect.runtime.resolve import _kind_from_path

PACKAGE = Path(__file__).resolve().parents[1] / "dereflect"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """dereflect module -> the dereflect modules it imports anywhere (function-level imports too:
    a cycle hidden behind a lazy import is still a cycle)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 60 and "dereflect.runtime.backends.base" in graph  # the scan sees the package
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, with no other dereflect module loaded (a fresh interpreter's view
    of it): an order-dependent import or a cycle fails here. One interpreter for all, to stay fast."""
    names = [m for m in _modules() if not m.endswith("__main__")]
    code = (
        "import importlib, sys, traceback\n"
        f"failed = []\nfor name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'dereflect' or m.startswith('dereflect.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception:\n        failed.append(name + ': ' + traceback.format_exc().splitlines()[-1])\n"
        "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


# ------------------------------------------------------------------ the format table drives everything
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_each_row_is_complete(fmt, tmp_path: Path) -> None:
    """What a row must have for export, runtime and bench to handle the format with no other change."""
    assert callable(getattr(Exporter, f"_build_{fmt.name}", None)), f"no Exporter._build_{fmt.name}"
    assert fmt.backends and all(b in REGISTRY for b in fmt.backends), fmt.backends
    assert fmt.precisions and set(fmt.precisions) <= set(PRECISIONS)
    assert runnable_by(fmt.name) == fmt.backends
    for precision in fmt.precisions:  # what export writes, the runtime recognises as this format
        artifact = tmp_path / fmt.artifact_name("student-nano", precision)
        if fmt.is_dir:
            artifact.mkdir()
            if fmt.folder_glob:
                (artifact / fmt.folder_glob.replace("*", "model")).write_text("")
        else:
            artifact.write_bytes(b"")
        assert format_for_path(artifact) is fmt
        assert _kind_from_path(artifact) == fmt.name


def test_every_backend_runs_some_row_and_honours_the_contract() -> None:
    rows = (CHECKPOINT, *FORMATS)
    assert set(BACKENDS) == set(REGISTRY) == {b for f in rows for b in f.backends}
    assert sorted(REGISTRY, key=speed_rank) == list(REGISTRY)
    for name, cls in REGISTRY.items():
        assert issubclass(cls, Backend) and cls.name == name and get_backend(name) is cls
        assert cls.module and (cls.problem() is None or isinstance(cls.problem(), str))
        assert "infer" in cls.__dict__ and "__init__" in cls.__dict__, f"{name} must build itself and infer"


def test_checkpoint_row_and_unknown_names() -> None:
    assert format_for_path(Path("x.safetensors")) is CHECKPOINT and runnable_by("checkpoint") == ("torch",)
    assert format_for_path(Path("x.txt")) is None and runnable_by("no-such-format") == ()
    assert format_for_path(Path("student.web.onnx")).name == "onnx"
