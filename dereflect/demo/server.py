"""The phone demo's web server: starlette's StaticFiles under uvicorn, and our policy as one middleware.

Why not `python -m http.server`: the app needs response headers a plain file server does not send.
onnxruntime-web runs WASM threads only on a cross-origin isolated page (COOP `same-origin` + COEP
`require-corp`), and `.wasm` must be `application/wasm` for streaming compilation. Why not our own
server either: `--lan` puts it on a network, and http.server's own documentation calls it unfit
for that. uvicorn (HTTP parsing, keep-alive, TLS) and starlette (file responses, ETag/304, HEAD)
are maintained; what is ours is the policy, `DemoPolicy`, in front of them:

- read-only: GET and HEAD only (405 with `Allow` otherwise), request bodies refused (413), long
  URLs (414) and header floods (431) refused, every refusal closes the connection;
- an allow-list of files: the URL is resolved by `resolve_request_path` (percent-decoded once;
  `..`, NUL, backslashes, dotfiles, directories without index.html and anything whose real path,
  symlinks followed, leaves the app folder give 404), and StaticFiles is handed only that real path;
- the headers: COOP/COEP/CORP, a CSP, nosniff and friends on every response (errors included,
  also uvicorn's own 400s: `PolicyH11Protocol`), our MIME types, re-validation for the HTML;
- precompressed `.wasm.gz` twins when the browser accepts gzip;
- loopback unless asked (`bind_address`); `--lan` means HTTPS (certificates: demo/tls.py).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from dereflect.errors import DereflectError, os_reason

#: Where `make demo-app` (android_demo/build.py) puts the built app: inside the package, so a
#: non-editable install (`pip install .` after `make demo-app`) serves it too.
APP_ROOT = Path(str(resources.files("dereflect.demo") / "www"))
#: Another built app folder to serve by default (--root overrides both).
APP_ENV = "DEREFLECT_DEMO_APP"
BUILD_HINT = "run `make demo-app` (needs node/npm: it installs onnxruntime-web from the npm registry and exports the model)"
#: Longest URL accepted (the app's own URLs are < 100 characters).
MAX_URL = 2048
#: Most request headers accepted (a browser sends ~20).
MAX_HEADERS = 100
#: Largest request head accepted: uvicorn's parser (h11) answers 400 to a longer incomplete head,
#: the policy 431 to a longer complete one.
MAX_HEAD_BYTES = 16 * 1024
ALLOWED_METHODS = ("GET", "HEAD")

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".ort": "application/octet-stream",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".gz": "application/gzip",
}

#: Everything the app loads is its own: scripts, the wasm (compiled: 'wasm-unsafe-eval'), the
#: model (fetched), the threads' workers. Camera frames and results stay in blob:/data: URLs.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self' blob:",
        "connect-src 'self' blob: data:",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: mediastream:",
        "style-src 'self'",
        "manifest-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
    "X-Frame-Options": "DENY",
}

#: Files a browser must re-validate on every load (so a rebuilt app is picked up); the rest is
#: immutable between builds (the service worker's cache is keyed by the build id anyway).
REVALIDATE = {".html", ".webmanifest", ".json"}
REVALIDATE_NAMES = {"sw.js"}


def content_type(path: Path) -> str:
    return MIME_TYPES.get(path.suffix.lower(), "application/octet-stream")


def check_built(root: Path) -> Path:
    """The app folder, resolved; a DereflectError saying how to build it when it is not there."""
    if not (root / "index.html").is_file():
        raise DereflectError(root, f"the phone demo app is not built yet: {BUILD_HINT}")
    return root.resolve()


def _inside(root: Path, target: Path) -> bool:
    """`target` (resolved) is under `root` and, once symlinks are followed, still no dotfile:
    a link in the app folder must not publish `.env` or `.git/` from beside it."""
    return target.is_relative_to(root) and not any(p.startswith(".") for p in target.relative_to(root).parts)


def resolve_request_path(root: Path, url: str) -> Path | None:
    """The regular file under `root` (already resolved) a request URL names, or None.

    The URL path is percent-decoded once; a decoded `..` segment, NUL or backslash, a dotfile,
    a directory without index.html, or anything whose real path (symlinks followed) is outside
    `root` gives None. `/` is index.html.
    """
    if not url.startswith("/") or url.startswith("//"):
        return None  # absolute-form and scheme-relative targets are not ours to serve
    try:
        decoded = unquote(urlsplit(url).path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\x00" in decoded or "\\" in decoded:
        return None
    parts = [p for p in decoded.split("/") if p not in ("", ".")]
    if any(p == ".." or p.startswith(".") for p in parts):
        return None
    try:
        target = root.joinpath(*parts).resolve(strict=True)
        if not _inside(root, target):
            return None
        if target.is_dir():
            target = (target / "index.html").resolve(strict=True)
            if not _inside(root, target):
                return None
        return target if target.is_file() else None
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a name the OS refuses
        return None


def default_root() -> Path:
    """The app folder `serve` uses without --root: $DEREFLECT_DEMO_APP, else the packaged build."""
    return Path(os.environ[APP_ENV]) if os.environ.get(APP_ENV) else APP_ROOT


# -------------------------------------------------------------------- the policy
Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def _security_headers() -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


class DemoPolicy:
    """ASGI middleware: refuse what we never serve, map the URL to an allowed file, set our headers."""

    def __init__(self, app: Callable[..., Any], root: Path) -> None:
        self.app = app
        self.root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets, no lifespan work
        refusal = self._refusal(scope)
        if refusal is not None:
            await _plain(scope, send, *refusal)
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        path = resolve_request_path(self.root, raw.decode("latin-1"))
        if path is None:
            await _plain(scope, send, 404, "not found")
            return
        gz = path.with_name(path.name + ".gz")
        has_gz = gz.is_file() and _inside(self.root, gz.resolve())
        accepts_gzip = any(name == b"accept-encoding" and b"gzip" in value for name, value in scope["headers"])
        source = gz.resolve() if has_gz and accepts_gzip else path
        relative = "/" + source.relative_to(self.root).as_posix()
        inner = dict(scope, path=relative, raw_path=quote(relative).encode(), root_path="")
        extra = [
            (b"content-type", content_type(path).encode()),
            (b"cache-control", b"no-cache" if _revalidate(path) else b"public, max-age=3600"),
        ]
        if has_gz:
            extra.append((b"vary", b"Accept-Encoding"))
        if source is not path:
            extra.append((b"content-encoding", b"gzip"))

        async def send_with_policy(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                ours = {name for name, _ in extra} if message["status"] in (200, 304) else set()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in ours]
                headers += [h for h in extra if h[0] in ours] + _security_headers()
                message = dict(message, headers=headers)
            await send(message)

        await self.app(inner, receive, send_with_policy)

    @staticmethod
    def _refusal(scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        """(status, text, headers) for a request we refuse before looking at files; None to go on."""
        if scope.get("http_version") not in ("1.0", "1.1"):
            return 505, f"HTTP/{scope.get('http_version')} is not supported: HTTP/1.1 only", {}
        if scope["method"] not in ALLOWED_METHODS:
            return 405, f"{scope['method']} not allowed: this server is read-only", {"Allow": ", ".join(ALLOWED_METHODS)}
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > MAX_URL:
            return 414, f"URL longer than {MAX_URL} characters", {}
        if len(scope["headers"]) > MAX_HEADERS:
            return 431, f"more than {MAX_HEADERS} request headers", {}
        if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > MAX_HEAD_BYTES:
            return 431, f"request headers longer than {MAX_HEAD_BYTES} bytes", {}
        headers = dict(scope["headers"])
        if b"transfer-encoding" in headers or headers.get(b"content-length", b"").strip() not in (b"", b"0"):
            return 413, "request bodies are not accepted", {}
        return None


async def _plain(scope: Scope, send: Send, status: int, text: str, extra: dict[str, str] | None = None) -> None:
    """A short text answer with every security header; refusals (4xx but 404) also close the connection."""
    body = (text + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    if status != 404:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers + _security_headers()})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _revalidate(path: Path) -> bool:
    return path.suffix.lower() in REVALIDATE or path.name in REVALIDATE_NAMES


def create_app(root: Path) -> DemoPolicy:
    """The ASGI app serving the built app folder `root` (resolved) under our policy."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    files = Starlette(routes=[Mount("/", app=StaticFiles(directory=root, html=False, follow_symlink=False))])
    return DemoPolicy(files, root)


# -------------------------------------------------------------------- the server
def _policy_h11_protocol() -> type:
    """uvicorn's h11 protocol, whose own 400 answers (malformed request lines, oversized heads)
    carry our security headers too: they never reach the ASGI app."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class PolicyH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = (msg + "\n").encode()
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ] + _security_headers()
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body), h11.EndOfMessage()):
                try:
                    self.transport.write(self.conn.send(event))
                except h11.LocalProtocolError:  # the parser is past sending a response: just hang up
                    break
            self.transport.close()

    return PolicyH11Protocol


class DemoServer:
    """uvicorn serving `create_app(root)` on a socket bound here (so a busy port is one clear error
    before anything starts, and port 0 is known at once), optionally over TLS."""

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int = 8000, tls: ssl.SSLContext | None = None, quiet: bool = False
    ) -> None:
        import uvicorn
        from uvicorn.config import LOGGING_CONFIG

        self.root = check_built(Path(root))
        self.tls = tls
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise DereflectError(f"{host}:{port}", f"cannot listen there ({os_reason(exc)})") from None
        self.socket = sock
        self.server_address = sock.getsockname()
        config = uvicorn.Config(
            create_app(self.root),
            http=_policy_h11_protocol(),
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            timeout_keep_alive=30,
            ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None,
            log_config=None if quiet else LOGGING_CONFIG,
            log_level="critical" if quiet else "info",
            access_log=not quiet,
        )
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until `shutdown()` (another thread) or Ctrl+C (uvicorn's own handler, main thread)."""
        self._stopped.clear()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


# -------------------------------------------------------------------- addresses
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_address(host: str, lan: bool) -> str:
    """Loopback unless asked: --lan means every interface (0.0.0.0) unless --host names one."""
    return "0.0.0.0" if lan and host == "127.0.0.1" else host


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses a phone could reach (no loopback, no link-local), read from
    the interfaces (psutil) or else the resolver; no traffic is sent. Wi-Fi/Ethernet first,
    container bridges (docker0, br-*, veth*) last."""
    found: list[tuple[int, str]] = []
    try:
        import psutil

        for name, addrs in psutil.net_if_addrs().items():
            bridge = name.startswith(("docker", "br-", "veth", "virbr", "cni", "flannel", "lxc", "tun", "tap", "utun"))
            found += [(int(bridge), a.address) for a in addrs if a.family == socket.AF_INET]
    except ImportError:
        for host in {socket.gethostname(), socket.getfqdn()}:
            try:
                found += [(0, str(info[4][0])) for info in socket.getaddrinfo(host, None, socket.AF_INET)]
            except OSError:
                continue
    ordered: list[str] = []
    for _, addr in sorted(found, key=lambda item: item[0]):
        ip = ipaddress.ip_address(addr)
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified) and addr not in ordered:
            ordered.append(addr)
    return ordered
