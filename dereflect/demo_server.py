"""`dereflect demo serve`: serves the phone camera demo app (android_demo/www) and nothing else.

Why a server of our own rather than `python -m http.server`: the app needs response headers a
plain file server does not send. onnxruntime-web runs WASM threads only on a cross-origin
isolated page (COOP `same-origin` + COEP `require-corp`), and `.wasm` must be `application/wasm`
for streaming compilation. Phones allow the camera only on a secure origin, so `--lan` serves
HTTPS with a generated certificate (http://localhost, e.g. through `adb reverse`, is secure too).

The server is deliberately small and read-only: GET and HEAD of regular files under the app
folder (405 for every other method), no directory listings, no dotfiles, paths resolved and
checked to stay inside the folder (encoded `../`, absolute paths and symlinks pointing out are
refused), request bodies refused (413), long URLs refused (414), a CSP on every response.

`ledger_row` turns browser latencies into a row of the benchmark ledger (the shape the
benchmark runner uses), so the browser test and `android_demo/bench.py` report alike.
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import os
import socket
import ssl
import statistics
import sys
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

import typer

from dereflect.errors import DereflectError, UsageError

#: Where `make demo-app` (android_demo/build.py) puts the built app.
APP_ROOT = Path(__file__).resolve().parents[1] / "android_demo" / "www"
BUILD_HINT = "run `make demo-app` (needs node/npm: it installs onnxruntime-web from the npm registry and exports the model)"
#: Longest URL accepted (the app's own URLs are < 100 characters).
MAX_URL = 2048
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
CSP = "; ".join([
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
])

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


class DemoRequestHandler(BaseHTTPRequestHandler):
    """GET/HEAD of the app's files with the headers the app needs; 405 for every other method."""

    server: "DemoServer"
    server_version = "dereflect-demo"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Errors in a request line that names no version (or a bad one) are answered as HTTP/1.0, with
    # a status line and the security headers; the stdlib's HTTP/0.9 default sends a bare HTML body.
    default_request_version = "HTTP/1.0"
    timeout = 30  # a client that stops sending mid-request frees its thread

    def __getattr__(self, name: str) -> Any:
        # http.server dispatches to do_<METHOD>; every method but GET and HEAD lands here.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def end_headers(self) -> None:
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    # ---------------------------------------------------------------- responses
    def _plain(self, status: HTTPStatus, text: str, extra: dict[str, str] | None = None, close: bool = False) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _method_not_allowed(self) -> None:
        self._plain(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} not allowed: this server is read-only",
                    {"Allow": ", ".join(ALLOWED_METHODS)}, close=True)

    def _refuse_body(self) -> bool:
        """True (and a 413 sent) when the request carries a body: nothing here reads one."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length is not None and length.strip() not in ("", "0")):
            self._plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request bodies are not accepted", close=True)
            return True
        return False

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        if len(self.path) > MAX_URL:
            self._plain(HTTPStatus.REQUEST_URI_TOO_LONG, f"URL longer than {MAX_URL} characters", close=True)
            return
        if self._refuse_body():
            return
        path = resolve_request_path(self.server.root, self.path)
        if path is None:
            self._plain(HTTPStatus.NOT_FOUND, "not found")
            return
        gz = path.with_name(path.name + ".gz")
        use_gz = "gzip" in self.headers.get("Accept-Encoding", "") and gz.is_file() and _inside(self.server.root, gz.resolve())
        source = gz if use_gz else path
        try:
            fh = open(source, "rb")
        except OSError:
            self._plain(HTTPStatus.NOT_FOUND, "not found")
            return
        with fh:
            st = os.fstat(fh.fileno())
            etag = '"' + hashlib.sha1(f"{source.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:20] + '"'
            if etag in [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]:
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type(path))
            self.send_header("Content-Length", str(st.st_size))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            revalidate = path.suffix.lower() in REVALIDATE or path.name in REVALIDATE_NAMES
            self.send_header("Cache-Control", "no-cache" if revalidate else "public, max-age=3600")
            if gz.is_file():
                self.send_header("Vary", "Accept-Encoding")
            if use_gz:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            if not head:
                try:
                    while block := fh.read(1 << 16):
                        self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True


class DemoServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer bound to one folder (resolved once), optionally over TLS."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 8000,
                 tls: ssl.SSLContext | None = None, quiet: bool = False) -> None:
        self.root = check_built(Path(root))
        self.quiet = quiet
        self.tls = tls
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address_family = family
        try:
            super().__init__((host, port), DemoRequestHandler)
        except OSError as exc:
            raise DereflectError(f"{host}:{port}", f"cannot listen there ({exc.strerror or exc})") from None
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshakes happen on the worker thread, so one slow client cannot stall accept().
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(DemoRequestHandler.timeout)
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return  # a browser that refuses our certificate hangs up here: not an error of ours
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.quiet:
            super().handle_error(request, client_address)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def port(self) -> int:
        return int(self.server_address[1])


# -------------------------------------------------------------------- addresses and certificates
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


def cert_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dereflect" / "demo-tls"


def ensure_certificate(folder: Path, hosts: list[str], days: int = 365) -> tuple[Path, Path, Path]:
    """(certificate chain, key, CA certificate) for `hosts`, made once and kept in `folder`.

    A small local CA signs the server certificate: a phone that installs `ca.pem` as a trusted
    CA then gets a valid HTTPS origin (needed for the service worker, so for installing the app
    and offline use); without it the browser warns once and the camera still works. The server
    certificate is remade when a host is missing from it or it is about to expire; the CA stays,
    so a phone trusts it once.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise UsageError(None, "--lan needs the `cryptography` package: pip install 'dereflect[demo]'") from None

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca_pem, ca_key_pem = folder / "ca.pem", folder / "ca-key.pem"
    cert_pem, key_pem = folder / "server.pem", folder / "server-key.pem"
    now = datetime.now(timezone.utc)

    def write_key(path: Path, key: Any) -> None:
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    if ca_pem.is_file() and ca_key_pem.is_file():
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_pem.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dereflect demo local CA ({socket.gethostname()})")])
        ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(now + timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                   .sign(ca_key, hashes.SHA256()))
        write_key(ca_key_pem, ca_key)
        ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        cert_pem.unlink(missing_ok=True)

    wanted = sorted(set(hosts) | {"localhost", "127.0.0.1"})
    if cert_pem.is_file() and key_pem.is_file():
        cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
        if set(wanted) <= have and cert.not_valid_after_utc - now > timedelta(days=7):
            return cert_pem, key_pem, ca_pem

    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for host in wanted:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dereflect demo")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=min(days, 397)))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_key(key_pem, key)
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM))
    return cert_pem, key_pem, ca_pem


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise DereflectError(cert, f"cannot load the TLS certificate/key ({exc})") from None
    return ctx


def print_qr(url: str) -> None:
    """The URL as a QR code in the terminal, for the phone's camera app; a note when qrcode is absent."""
    try:
        import qrcode
    except ImportError:
        typer.echo("(no QR code: install the `qrcode` package, e.g. pip install 'dereflect[demo]')")
        return
    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(url)
    qr.make(fit=True)
    qr.print_ascii(out=sys.stdout, invert=True)


# -------------------------------------------------------------------- the bench ledger
def ledger_row(latencies_ms: list[float], *, size: int, device: str, backend: str = "onnxruntime-web/wasm",
               fmt: str = "onnx", precision: str = "int8", status: str = "ok", **extra: Any) -> dict[str, Any]:
    """One benchmark-ledger row from per-run latencies (ms) of one input size (square, px).

    median and p90 (nearest rank) are what the ledger compares across targets; the raw runs
    are kept so a reader can judge the spread. `extra` (threads, model, browser...) is kept.
    """
    if status == "ok" and not latencies_ms:
        raise ValueError("an 'ok' ledger row needs at least one latency")
    runs = sorted(float(v) for v in latencies_ms)
    p90 = runs[min(len(runs) - 1, max(0, -(-9 * len(runs) // 10) - 1))] if runs else None
    return {
        "device": device, "backend": backend, "format": fmt, "precision": precision, "size": int(size),
        "status": status,
        "latency_ms": round(statistics.median(runs), 2) if runs else None,
        "p90_ms": round(p90, 2) if p90 is not None else None,
        "runs": len(runs), "runs_ms": [round(v, 2) for v in latencies_ms],
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


# -------------------------------------------------------------------- the command
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless asked; --lan: 0.0.0.0)."),
    port: int = typer.Option(8000, "--port", help="Port (0: any free port)."),
    lan: bool = typer.Option(False, "--lan", help="Serve to phones on this network: bind 0.0.0.0 over HTTPS "
                             "with a generated certificate, print the URL and a QR code."),
    root: Path = typer.Option(APP_ROOT, "--root", help="Built app folder to serve (default: android_demo/www)."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="Your own TLS certificate chain (PEM), e.g. from mkcert."),
    key: Optional[Path] = typer.Option(None, "--key", help="Its private key (PEM)."),
    quiet: bool = typer.Option(False, "--quiet", help="Do not log requests."),
) -> None:
    """Serve the phone camera demo app (build it first: `make demo-app`).

    Phones allow the camera only on a secure origin: use --lan (HTTPS, self-signed by a local
    CA) or forward the port over USB (`adb reverse tcp:8000 tcp:8000`, then http://localhost:8000).

    Example: dereflect demo serve --lan --port 8443
    """
    if not 0 <= port <= 65535:
        raise UsageError(None, f"--port must be 0..65535, got {port}")
    if (cert is None) != (key is None):
        raise UsageError(None, "--cert and --key go together")
    check_built(root)  # before any certificate work: say how to build first
    bind = bind_address(host, lan)
    ca_path: Path | None = None
    ctx: ssl.SSLContext | None = None
    lan_ips = lan_addresses() if not is_loopback(bind) else []
    if cert is not None and key is not None:
        ctx = tls_context(cert, key)
    elif lan:
        hosts = lan_ips + ([bind] if bind not in ("0.0.0.0", "::") else [])
        cert, key, ca_path = ensure_certificate(cert_dir(), hosts)
        ctx = tls_context(cert, key)
    server = DemoServer(root, bind, port, tls=ctx, quiet=quiet)
    shown = lan_ips if bind in ("0.0.0.0", "::") else [bind]
    urls = [f"{server.scheme}://{h if ':' not in h else f'[{h}]'}:{server.port}/" for h in (shown or ["127.0.0.1"])]
    typer.echo(f"serving {server.root} at " + ", ".join(urls))
    if bind in ("0.0.0.0", "::") and not lan_ips:
        typer.echo("note: no network address found on this machine: a phone cannot reach it (is Wi-Fi up?)")
    if not is_loopback(bind) and ctx is None:
        typer.echo("note: plain HTTP on a network address: phones will refuse the camera; use --lan for HTTPS.")
    if ca_path is not None:
        typer.echo(f"TLS: a local CA signed this server's certificate; the phone warns once unless it trusts {ca_path} "
                   "(install it as a CA certificate for the service worker: offline use and 'Install app').")
    if lan:
        print_qr(urls[0])
    typer.echo("Ctrl+C stops the server.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()
