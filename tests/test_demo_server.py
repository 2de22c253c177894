"""`dereflect demo serve` and the demo's pixel code: fast unit tests, no browser.

The server is started for real on a loopback port and spoken to with raw http.client requests
(which send the path exactly as written, so `..`, `%2e%2e` and friends reach the server
un-normalised). The app's image code (android_demo/app/imageops.js) is run under node and
compared with Pillow and dereflect.runtime.tiling, whose behaviour it mirrors.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from dereflect.bench.ledger import ledger_row
from dereflect.demo.cli import print_qr
from dereflect.demo.server import CSP, DemoServer, bind_address, resolve_request_path
from dereflect.demo.tls import ensure_certificate, tls_context
from dereflect.errors import DereflectError

REPO = Path(__file__).resolve().parents[1]
IMAGEOPS = REPO / "android_demo" / "app" / "imageops.js"
SECRET = "top secret, outside the app folder"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An app folder with one file of each served type, and things beside it that must stay hidden."""
    tmp_path = tmp_path_factory.mktemp("site")
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>demo</title>")
    (root / "main.js").write_text("export const x = 1;")
    (root / "ort.min.mjs").write_text("export default 1;")
    (root / "model.onnx").write_bytes(b"\x08\x01onnx")
    (root / "manifest.webmanifest").write_text("{}")
    (root / "runtime.wasm").write_bytes(b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) * 64)
    with gzip.open(root / "runtime.wasm.gz", "wb") as fh:
        fh.write((root / "runtime.wasm").read_bytes())
    (root / "sub" / "page.txt").write_text("inside")
    (root / ".hidden").write_text("dotfile")
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text(SECRET)
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    os.symlink(tmp_path / "outside", root / "linkdir")
    os.symlink(root / "sub" / "page.txt", root / "alias.txt")  # a link that stays inside is fine
    return root


@pytest.fixture(scope="module")
def server(site: Path):
    srv = DemoServer(site, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(
    srv: DemoServer, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# ------------------------------------------------------------------ headers and types
def test_index_has_isolation_and_security_headers(server: DemoServer) -> None:
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and body == b"<!doctype html><title>demo</title>"
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-length"] == str(len(body))
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-embedder-policy"] == "require-corp"
    assert headers["cross-origin-resource-policy"] == "same-origin"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == CSP
    assert "'wasm-unsafe-eval'" in CSP and "'unsafe-eval'" not in CSP.replace("'wasm-unsafe-eval'", "")
    assert headers["cache-control"] == "no-cache"  # a rebuilt app is picked up on the next load


@pytest.mark.parametrize(
    "path, mime",
    [
        ("/main.js", "text/javascript; charset=utf-8"),
        ("/ort.min.mjs", "text/javascript; charset=utf-8"),
        ("/runtime.wasm", "application/wasm"),
        ("/model.onnx", "application/octet-stream"),
        ("/manifest.webmanifest", "application/manifest+json"),
    ],
)
def test_mime_types(server: DemoServer, path: str, mime: str) -> None:
    status, headers, _ = request(server, "GET", path)
    assert status == 200 and headers["content-type"] == mime
    assert headers["cross-origin-embedder-policy"] == "require-corp"


def test_head_sends_headers_only(server: DemoServer, site: Path) -> None:
    status, headers, body = request(server, "HEAD", "/runtime.wasm")
    assert status == 200 and body == b""
    assert headers["content-length"] == str((site / "runtime.wasm").stat().st_size)


def test_precompressed_wasm_only_when_accepted(server: DemoServer, site: Path) -> None:
    raw = (site / "runtime.wasm").read_bytes()
    status, headers, body = request(server, "GET", "/runtime.wasm", {"Accept-Encoding": "gzip, deflate"})
    assert status == 200 and headers["content-encoding"] == "gzip" and headers["content-type"] == "application/wasm"
    assert gzip.decompress(body) == raw and len(body) < len(raw)
    status, headers, body = request(server, "GET", "/runtime.wasm")
    assert "content-encoding" not in headers and body == raw
    assert headers["vary"] == "Accept-Encoding"


def test_etag_revalidation(server: DemoServer) -> None:
    _, headers, _ = request(server, "GET", "/main.js")
    status, again, body = request(server, "GET", "/main.js", {"If-None-Match": headers["etag"]})
    assert status == 304 and body == b"" and again["etag"] == headers["etag"]


def test_link_inside_root_is_served(server: DemoServer) -> None:
    assert request(server, "GET", "/alias.txt")[:3:2] == (200, b"inside")


# ------------------------------------------------------------------ what must never be served
@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..%2fsecret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/%252e%252e/secret.txt",  # double-encoded: decoded once, it is a file literally named %2e%2e
        "/..\\secret.txt",
        "/%5c..%5csecret.txt",
        "//etc/passwd",
        "/etc/passwd",
        "/%2fetc%2fpasswd",
        f"/{'%2e%2e/' * 12}etc/passwd",
        "/index.html%00.png",
        "/escape.txt",  # symlink to a file outside
        "/linkdir/secret.txt",  # symlinked folder outside
        "/.hidden",
        "/%2ehidden",
        "http://127.0.0.1/../secret.txt",
    ],
)
def test_traversal_attempts_are_refused(server: DemoServer, path: str) -> None:
    status, _, body = request(server, "GET", path)
    assert status in (400, 404), f"{path} -> {status}"
    assert SECRET.encode() not in body and b"root:" not in body and b"dotfile" not in body


def test_resolver_refuses_escapes_directly(site: Path) -> None:
    root = site.resolve()
    assert resolve_request_path(root, "/main.js") == root / "main.js"
    assert resolve_request_path(root, "/") == root / "index.html"
    for url in ("/../secret.txt", "/%2e%2e/secret.txt", "/escape.txt", "/linkdir/secret.txt", "/%ff", "relative"):
        assert resolve_request_path(root, url) is None, url


def test_no_directory_listing(server: DemoServer) -> None:
    status, _, body = request(server, "GET", "/sub/")
    assert status == 404 and b"page.txt" not in body
    assert request(server, "GET", "/sub")[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "BREW"])
def test_other_methods_get_405(server: DemoServer, site: Path, method: str) -> None:
    status, headers, _ = request(server, method, "/main.js", body=b"overwritten")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert headers["x-content-type-options"] == "nosniff"
    assert (site / "main.js").read_text() == "export const x = 1;"


def test_request_body_and_long_url_are_refused(server: DemoServer) -> None:
    assert request(server, "GET", "/main.js", body=b"x" * 100)[0] == 413
    assert request(server, "GET", "/main.js", {"Transfer-Encoding": "chunked"})[0] == 413
    assert request(server, "GET", "/" + "a" * 3000)[0] == 414


# ------------------------------------------------------------------ binding, building, TLS
def test_binds_loopback_unless_asked(site: Path) -> None:
    assert bind_address("127.0.0.1", lan=False) == "127.0.0.1"
    assert bind_address("127.0.0.1", lan=True) == "0.0.0.0"
    assert bind_address("192.0.2.7", lan=True) == "192.0.2.7"
    srv = DemoServer(site, port=0, quiet=True)
    try:
        assert srv.server_address[0] == "127.0.0.1" and srv.scheme == "http"
    finally:
        srv.server_close()


def test_unbuilt_app_says_which_target_builds_it(tmp_path: Path) -> None:
    with pytest.raises(DereflectError, match=r"not built yet: run `make demo-app`"):
        DemoServer(tmp_path, port=0)
    proc = subprocess.run(
        [sys.executable, "-m", "dereflect", "demo", "serve", "--root", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(f"error: {tmp_path}: the phone demo app is not built yet: run `make demo-app`")


def test_port_in_use_is_one_clear_error(server: DemoServer, site: Path) -> None:
    with pytest.raises(DereflectError, match=f"127.0.0.1:{server.port}: cannot listen there"):
        DemoServer(site, "127.0.0.1", server.port)


def test_certificate_is_made_once_and_verifies(tmp_path: Path, site: Path) -> None:
    pytest.importorskip("cryptography")
    cert, key, ca = ensure_certificate(tmp_path / "tls", ["127.0.0.1"])
    assert (key.stat().st_mode & 0o777) == 0o600
    first = cert.read_bytes()
    again = ensure_certificate(tmp_path / "tls", ["127.0.0.1"])
    assert again == (cert, key, ca) and cert.read_bytes() == first  # kept: the phone's exception still holds
    srv = DemoServer(site, "127.0.0.1", 0, tls=tls_context(cert, key), quiet=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        client = ssl.create_default_context(cafile=str(ca))  # verifies the chain and the IP SAN
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=client, timeout=10)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Cross-Origin-Embedder-Policy") == "require-corp"
        conn.close()
        # a client without our CA refuses the certificate: it really is checked
        with pytest.raises(ssl.SSLCertVerificationError):
            bare = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ssl.create_default_context(), timeout=10)
            bare.request("GET", "/")
    finally:
        srv.shutdown()
        srv.server_close()
    # a new address is added to a new server certificate, signed by the same CA
    cert2, _, ca2 = ensure_certificate(tmp_path / "tls", ["127.0.0.1", "192.0.2.10"])
    assert ca2 == ca and cert2.read_bytes() != first


def test_serve_lan_prints_https_url_and_qr(site: Path, tmp_path: Path) -> None:
    """The real command: --lan serves HTTPS on every interface, prints the URL and a QR code."""
    pytest.importorskip("cryptography")
    pytest.importorskip("qrcode")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dereflect", "demo", "serve", "--lan", "--port", "0", "--quiet", "--root", str(site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in proc.stdout:  # ends at "Ctrl+C stops the server."
            lines.append(line)
            if line.startswith("Ctrl+C"):
                break
        text = "".join(lines)
        first = lines[0]
        assert first.startswith(f"serving {site.resolve()} at https://"), text
        port = int(first.split()[-1].rstrip("/").rsplit(":", 1)[1].rstrip(","))
        assert "▀" in text or "█" in text  # the QR code
        ca = tmp_path / "cache" / "dereflect" / "demo-tls" / "ca.pem"
        assert str(ca) in text
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=str(ca)), timeout=10)
        conn.request("GET", "/main.js")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"export const x = 1;"
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------ ledger and QR helpers
def test_ledger_row_median_and_p90() -> None:
    row = ledger_row([30.0, 10.0, 20.0, 50.0, 40.0, 60.0, 70.0, 80.0, 90.0, 100.0], size=512, device="test", threads=2)
    assert row["backend"] == "onnxruntime-web/wasm" and row["format"] == "onnx" and row["precision"] == "int8"
    assert row["size"] == 512 and row["status"] == "ok" and row["threads"] == 2
    assert row["latency_ms"] == 55.0 and row["p90_ms"] == 90.0 and row["runs"] == 10
    assert ledger_row([7.0], size=256, device="d")["p90_ms"] == 7.0
    assert ledger_row([], size=256, device="d", status="skipped")["latency_ms"] is None
    with pytest.raises(ValueError, match="at least one latency"):
        ledger_row([], size=256, device="d")


def test_qr_code_in_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("qrcode")
    print_qr("https://192.0.2.1:8000/")
    out = capsys.readouterr().out
    assert len(out.splitlines()) > 10 and ("█" in out or "▀" in out)


# ------------------------------------------------------------------ the app's pixel code vs Python
def run_node(script: str, payload: dict) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the app's JS is checked under node)")
    prelude = f"import * as ops from {json.dumps(IMAGEOPS.as_uri())};\n"
    proc = subprocess.run(
        [node, "--input-type=module", "-e", prelude + script], input=json.dumps(payload), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


READ_STDIN_ESM = "import { readFileSync } from 'node:fs';\nconst input = JSON.parse(readFileSync(0, 'utf8'));\n"


def test_js_resize_is_pillows_bilinear() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    cases = []
    for (w, h), (dw, dh) in [
        ((640, 424), (512, 339)),
        ((97, 61), (40, 25)),
        ((300, 500), (307, 512)),
        ((1000, 10), (512, 5)),
        ((33, 33), (33, 20)),
    ]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[: h // 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]  # smooth part + noise part
        cases.append((img, (dw, dh)))
    payload = {
        "cases": [{"w": img.shape[1], "h": img.shape[0], "dw": dw, "dh": dh, "rgb": img.reshape(-1).tolist()} for img, (dw, dh) in cases]
    }
    script = (
        READ_STDIN_ESM
        + """
const out = input.cases.map((c) => {
  const data = new Uint8ClampedArray(c.w * c.h * 4);
  for (let i = 0; i < c.w * c.h; i++) { data.set(c.rgb.slice(i * 3, i * 3 + 3), i * 4); data[i * 4 + 3] = 255; }
  const r = ops.resizeBilinear({ width: c.w, height: c.h, data }, c.dw, c.dh);
  const rgb = [];
  for (let i = 0; i < r.width * r.height; i++) rgb.push(r.data[i * 4], r.data[i * 4 + 1], r.data[i * 4 + 2]);
  return rgb;
});
console.log(JSON.stringify({ out }));
"""
    )
    got = run_node(script, payload)["out"]
    for (img, (dw, dh)), rgb in zip(cases, got):
        ref = np.asarray(Image.fromarray(img).resize((dw, dh), Image.BILINEAR))
        assert np.array_equal(np.array(rgb, np.uint8).reshape(dh, dw, 3), ref), (img.shape, dw, dh)


def test_js_padding_and_tile_plan_mirror_python() -> None:
    tiling = pytest.importorskip("dereflect.runtime.tiling", reason="dereflect.runtime is not importable")
    sizes = [
        (424, 640, 256, 64),
        (4000, 3000, 512, 64),
        (3024, 4032, 512, 64),
        (1080, 1920, 512, 64),
        (17, 1000, 256, 128),
        (520, 520, 512, 64),
        (100, 100, 512, 64),
        (2000, 37, 64, 16),
    ]
    script = (
        READ_STDIN_ESM
        + """
const plans = input.sizes.map(([h, w, tile, overlap]) => ops.planTiles(h, w, { tile, overlap }));
// a 6x5 image padded to 8x8 (reflect), and its 3x2 crop at (1,1) padded to 8x8 (too small to reflect: edge)
const img = { width: 6, height: 5, data: new Uint8ClampedArray(6 * 5 * 4).map((_, i) => (i % 4 === 3 ? 255 : i)) };
const big = Array.from(ops.cropToTensor(img, 0, 0, 6, 5, 8, 8), (v) => Math.round(v * 255));
const small = Array.from(ops.cropToTensor(img, 1, 1, 3, 2, 8, 8), (v) => Math.round(v * 255));
console.log(JSON.stringify({ plans, big, small, ramp: Array.from(ops.ramp(64)) }));
"""
    )
    got = run_node(script, {"sizes": sizes})
    for (h, w, tile, overlap), plan in zip(sizes, got["plans"]):
        ref = tiling.plan_tiles(h, w, tile=tile, overlap=overlap)
        assert (plan["ys"], plan["xs"]) == (list(ref.ys), list(ref.xs)), (h, w)
        assert (plan["tileH"], plan["tileW"], plan["overlap"]) == (ref.tile_h, ref.tile_w, ref.overlap), (h, w)
    rgba = np.arange(6 * 5 * 4).reshape(5, 6, 4)[..., :3]
    big = np.pad(rgba, ((0, 3), (0, 2), (0, 0)), mode="reflect")
    assert np.array_equal(np.array(got["big"]).reshape(3, 8, 8), big.transpose(2, 0, 1))
    small = np.pad(rgba[1:3, 1:4], ((0, 6), (0, 5), (0, 0)), mode="edge")
    assert np.array_equal(np.array(got["small"]).reshape(3, 8, 8), small.transpose(2, 0, 1))
    assert np.allclose(got["ramp"], tiling.ramp(64), atol=1e-7)
