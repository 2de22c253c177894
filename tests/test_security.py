"""Security: nothing is unpickled, changed artifacts are refused, the demo server leaks nothing.

- A scan of the source (AST, not grep: aliases and keyword order cannot fool it) shows every
  torch.load passes weights_only=True, nothing imports pickle-family modules, np.load never
  allows pickles and YAML is only read with safe loaders.
- A malicious pickle whose __reduce__ would create a marker file is shown to work (plain
  torch.load runs it) and then fed to every place a user can hand us a weights file: the training
  resume (state.pt), the VGG19 state dict, a checkpoint path, the runtime and `dereflect remove`.
  Each refuses it with one DereflectError, and the marker never appears.
- An artifact whose sha256 does not match its manifest is refused by runtime.load and by
  `dereflect remove`, and runs only with the explicit override (verify=False / --no-verify).
- The demo server: what tests/test_demo_server.py does not already cover (security headers on
  error responses, oversized headers, idle clients, symlinks to dotfiles / outside index.html /
  a precompressed twin, the CLI's loopback default).
"""

from __future__ import annotations

import ast
import http.client
import inspect
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dereflect.cli import main
from dereflect.demo.cli import serve_command
from dereflect.demo.server import SECURITY_HEADERS, DemoServer, resolve_request_path
from dereflect.errors import DereflectError
from dereflect.export.manifest import build_manifest, manifest_path, write_manifest
from dereflect.images import read_image, write_image
from dereflect.runtime import load

REPO = Path(__file__).resolve().parents[1]
SCANNED = [REPO / "dereflect", REPO / "tools", REPO / "speed", REPO / "android_demo"]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


# ====================================================================== source scan
def _python_files(roots: list[Path]) -> list[Path]:
    files = []
    for root in roots:
        if root.is_dir():
            files += [p for p in root.rglob("*.py") if "node_modules" not in p.parts and "www" not in p.parts]
    return sorted(files)


def _dotted(node: ast.AST) -> str:
    """`torch.load` for Attribute(Name('torch'), 'load'); '' for anything not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _calls(tree: ast.AST, aliases: dict[str, str]) -> Iterator[tuple[str, ast.Call]]:
    """(fully qualified name, call) for every call, with `import x as y` / `from x import f` undone."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            head, _, rest = name.partition(".")
            full = aliases.get(head, head) + (f".{rest}" if rest else "")
            yield full, node


def _aliases(tree: ast.AST) -> dict[str, str]:
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                found[a.asname or a.name] = f"{node.module}.{a.name}"
    return found


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def scan(roots: list[Path] = SCANNED, base: Path = REPO) -> dict[str, list[str]]:
    """Every risky call site in the scanned source, by kind: 'torch.load', 'problems'."""
    report: dict[str, list[str]] = {"torch.load": [], "problems": []}
    for path in _python_files(roots):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        aliases = _aliases(tree)
        where = lambda node, path=path: f"{path.relative_to(base)}:{node.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    if name.split(".")[0] in PICKLE_MODULES:
                        report["problems"].append(f"{where(node)}: imports {name}")
        for name, call in _calls(tree, aliases):
            if name in ("torch.load", "torch.serialization.load"):
                report["torch.load"].append(where(call))
                if not _is_const(_keyword(call, "weights_only"), True):
                    report["problems"].append(f"{where(call)}: torch.load without weights_only=True")
            elif name in ("numpy.load", "np.load"):
                allow = _keyword(call, "allow_pickle")
                if allow is not None and not _is_const(allow, False):
                    report["problems"].append(f"{where(call)}: np.load with allow_pickle not False")
            elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                loader = _dotted(_keyword(call, "Loader") or ast.Constant(None))
                if name in ("yaml.unsafe_load", "yaml.full_load") or not loader.endswith(("SafeLoader", "CSafeLoader")):
                    report["problems"].append(f"{where(call)}: {name} without a safe loader")
            elif name in ("torch.jit.load", "torch.package.PackageImporter", "pandas.read_pickle"):
                report["problems"].append(f"{where(call)}: {name} runs code from the file")
    return report


def test_source_never_unpickles() -> None:
    report = scan()
    assert report["problems"] == []
    # The scan sees the real call sites (training resume, the ImageNet weight files): it is not vacuous.
    sites = " ".join(report["torch.load"])
    assert "dereflect/train/loop.py" in sites and "dereflect/models/backbones.py" in sites


def test_scanner_catches_what_it_must(tmp_path: Path) -> None:
    """The scanner itself, on a file with every bad pattern (aliased, keyword-reordered)."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch as T\nimport pickle\nfrom numpy import load as npl\nimport yaml\n"
        "T.load('a')\nT.load('a', weights_only=False)\nnpl('x', allow_pickle=True)\n"
        "yaml.load(open('c'))\nimport torch\ntorch.load('ok', map_location='cpu', weights_only=True)\n"
        "yaml.load(open('c'), Loader=yaml.SafeLoader)\ntorch.jit.load('m')\n"
    )
    problems = scan([tmp_path], tmp_path)["problems"]
    assert problems == [
        "bad.py:2: imports pickle",
        "bad.py:5: torch.load without weights_only=True",
        "bad.py:6: torch.load without weights_only=True",
        "bad.py:7: np.load with allow_pickle not False",
        "bad.py:8: yaml.load without a safe loader",
        "bad.py:12: torch.jit.load runs code from the file",
    ]


# ====================================================================== malicious pickles
class _Payload:
    """Unpickling this calls open(marker, 'w'): the file appearing means code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """(a torch-format file carrying the payload inside a plausible state dict, its marker)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "config": "{}", "modules": {"model": {"w": torch.zeros(1)}}, "x": _Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_the_payload_really_runs_without_weights_only(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


def test_training_resume_refuses_a_pickle_state(
    evil: tuple[Path, Path], tmp_path: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dereflect train teacher --resume` with a state.pt that carries code."""
    path, marker = evil
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copyfile(path, run_dir / "state.pt")
    photos = tmp_path / "photos"
    for i in range(4):
        write_image(photos / f"p{i}.png", np.ascontiguousarray(np.rot90(photo, i)[:96, :96]))
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "teacher",
                "--out",
                str(run_dir),
                "--resume",
                "--data",
                str(photos),
                "--model",
                "teacher-small",
                "--steps",
                "1",
                "--batch",
                "1",
                "--size",
                "32",
                "--frames",
                "3",
                "--workers",
                "0",
            ]
        )
    assert exit_info.value.code == 1
    assert f"error: {run_dir / 'state.pt'}: cannot read training state" in capsys.readouterr().err
    assert not marker.exists()


def test_train_loop_load_state_refuses_pickle_directly(evil: tuple[Path, Path]) -> None:
    from dereflect.train.loop import Trainer

    path, marker = evil
    with pytest.raises(DereflectError, match="cannot read training state") as info:
        Trainer._load_state(object.__new__(Trainer), path)  # torch.load is the first thing it does
    assert info.value.path == str(path) and not marker.exists()


def test_vgg19_state_dict_refuses_pickle(evil: tuple[Path, Path]) -> None:
    from dereflect.models.vgg import load_torchvision_vgg19

    path, marker = evil
    with pytest.raises(DereflectError, match="cannot read a torch state dict"):
        load_torchvision_vgg19(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "evil.onnx"])
def test_runtime_and_remove_refuse_pickles_under_any_name(
    evil: tuple[Path, Path], tmp_path: Path, photo: np.ndarray, name: str, capsys
) -> None:
    path, marker = evil
    model = tmp_path / "m" / name
    model.parent.mkdir()
    shutil.copyfile(path, model)
    if name.endswith(".safetensors"):  # the torch backend reads safetensors, never pickle
        (model.with_suffix(".json")).write_text(json.dumps({"model": "student-nano", "config": {}}))
    with pytest.raises(DereflectError):
        load(model, verify=False)
    write_image(tmp_path / "in.png", photo[:32, :32])
    code = _run(["remove", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", str(model), "--no-verify"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out" / "in.png").exists()


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


# ====================================================================== sha256 vs manifest
def _identity_onnx(path: Path) -> Path:
    """The smallest artifact the runtime accepts: input -> Identity -> transmission, dynamic H/W."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["transmission"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("transmission", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    write_manifest(
        path,
        build_manifest(
            fmt="onnx", precision="fp32", runtime="onnxruntime", artifact=path, source={"model": "identity"}, parity={"status": "passed"}
        ),
    )
    return path


@pytest.fixture
def tampered(tmp_path: Path) -> Path:
    """An artifact changed after export: one byte of a doc string appended, manifest untouched."""
    art = _identity_onnx(tmp_path / "art" / "identity.onnx")
    assert load(art).backend == "onnxruntime"  # intact: accepted
    model = onnx.load(art)
    model.doc_string = "changed after export"
    onnx.save(model, art)
    return art


def test_runtime_refuses_a_changed_artifact_unless_overridden(tampered: Path, photo: np.ndarray) -> None:
    with pytest.raises(DereflectError, match="sha256 mismatch") as info:
        load(tampered)
    assert info.value.path == str(tampered)
    with pytest.raises(DereflectError, match="sha256 mismatch"):
        load(tampered.parent)  # the export folder: the one that would run is checked too
    session = load(tampered, verify=False)
    img = photo[:40, :56]
    np.testing.assert_array_equal(session.run(img), img)


def test_remove_refuses_a_changed_artifact_unless_no_verify(tampered: Path, tmp_path: Path, photo: np.ndarray, capsys) -> None:
    src = tmp_path / "in.png"
    write_image(src, photo[:40, :56])
    out = tmp_path / "out"
    assert _run(["remove", str(src), "-o", str(out), "--model", str(tampered)]) == 1
    err = capsys.readouterr().err
    assert f"error: {tampered}: sha256 mismatch" in err and not (out / "in.png").exists()
    assert _run(["remove", str(src), "-o", str(out), "--model", str(tampered), "--no-verify"]) == 0
    np.testing.assert_array_equal(read_image(out / "in.png").pixels, photo[:40, :56])


def test_manifest_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    """A manifest naming '../x' or an absolute path is refused; an export folder never yields it."""
    from dereflect.export.manifest import find_artifacts

    art = _identity_onnx(tmp_path / "art" / "identity.onnx")
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(art, outside)
    data = json.loads(manifest_path(art).read_text())
    for name in ("../outside.onnx", str(outside), "", ".."):
        data["artifact"] = name
        manifest_path(art).write_text(json.dumps(data))
        with pytest.raises(DereflectError, match="'artifact' must be a file name"):
            find_artifacts(art.parent)
        with pytest.raises(DereflectError, match="'artifact' must be a file name"):
            load(art)


# ====================================================================== demo server
SECRET = "secret outside the app"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sec")
    root = base / "www"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>demo</title>")
    (root / "app.js").write_text("export const ok = 1;")
    (root / ".env").write_text("TOKEN=dotfile-secret")
    (base / "secret.txt").write_text(SECRET)
    (base / "outside").mkdir()
    (base / "outside" / "index.html").write_text(SECRET)
    os.symlink(root / ".env", root / "env.txt")  # a link inside root, to a dotfile
    os.symlink(base / "outside", root / "portal")  # a folder whose index.html is outside
    os.symlink(base / "secret.txt", root / "app.js.gz")  # a precompressed twin that escapes
    return root


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[DemoServer]:
    srv = DemoServer(site, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def raw(srv: DemoServer, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(srv: DemoServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _headers(response: bytes) -> dict[str, str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head if ":" in line)}


def test_cli_binds_loopback_by_default() -> None:
    params = inspect.signature(serve_command).parameters
    assert params["host"].default.default == "127.0.0.1"
    assert params["lan"].default.default is False


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"404"),
        (b"DELETE /app.js HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"GET /app.js HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", b"413"),
        (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET /app.js HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
        (b"GET /app.js HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(150)) + b"\r\n", b"431"),
        (b"GET /app.js HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /app.js HTTP/9.9\r\n\r\n", b"505"),
    ],
)
def test_error_responses_carry_security_headers(server: DemoServer, request_bytes: bytes, status: bytes) -> None:
    """Every answer, errors and oversized requests included, has the full set of safe headers."""
    response = raw(server, request_bytes)
    assert response.split(b" ", 2)[1] == status, response[:200]
    headers = _headers(response)
    for key, value in SECURITY_HEADERS.items():
        assert headers.get(key.lower()) == value, key
    assert get(server, "/app.js")[0] == 200  # and the server is still up


def test_idle_client_does_not_block_others(server: DemoServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        idle.sendall(b"GET /app.js HT")  # and then nothing
        status, _, body = get(server, "/app.js")
        assert status == 200 and body == b"export const ok = 1;"


@pytest.mark.parametrize("path", ["/env.txt", "/portal/", "/portal/index.html", "/portal"])
def test_symlinks_to_dotfiles_or_outside_are_not_served(server: DemoServer, path: str) -> None:
    status, _, body = get(server, path)
    assert status == 404, path
    assert b"dotfile-secret" not in body and SECRET.encode() not in body


def test_escaping_precompressed_twin_is_ignored(server: DemoServer) -> None:
    status, headers, body = get(server, "/app.js", {"Accept-Encoding": "gzip"})
    assert status == 200 and body == b"export const ok = 1;" and "content-encoding" not in headers


def test_resolver_refuses_links_to_dotfiles(site: Path) -> None:
    root = site.resolve()
    assert resolve_request_path(root, "/app.js") == root / "app.js"
    assert resolve_request_path(root, "/env.txt") is None
    assert resolve_request_path(root, "/.env") is None


def test_no_method_writes(server: DemoServer, site: Path) -> None:
    """No verb, however spelled, reaches a handler that writes: the app folder is unchanged after all."""
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file() and not p.is_symlink()}
    for method in (b"PUT", b"POST", b"PATCH", b"DELETE", b"MKCOL", b"COPY", b"MOVE", b"get", b"Put"):
        response = raw(server, method + b" /new.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert response.split(b" ", 2)[1] in (b"405", b"501"), (method, response[:100])
    after = {p: p.read_bytes() for p in site.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before and not (site / "new.txt").exists()
