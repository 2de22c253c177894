"""`dereflect demo run` (the main job on built-in defaults) and `dereflect demo serve` (the phone app).

The work is in main_job.py and server.py; this module holds only the commands and their options.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import Optional

import typer

from dereflect.demo.server import (
    APP_ENV,
    DemoServer,
    bind_address,
    check_built,
    default_root,
    is_loopback,
    lan_addresses,
)
from dereflect.demo.tls import cert_dir, ensure_certificate, tls_context
from dereflect.errors import UsageError

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the results go."),
    sequences: int = typer.Option(8, "--sequences", min=1, help="How many sequences to synthesise."),
    size: int = typer.Option(256, "--size", min=32, help="Frame side in pixels."),
    bench_sizes: str = typer.Option("256", "--bench-sizes", help="Square sizes (px) the benchmark times."),
    formats: str = typer.Option("all", "--formats", help="Export formats to benchmark (comma-separated, or all)."),
    precisions: str = typer.Option("fp32,fp16,int8", "--precisions", help="Export precisions to benchmark."),
) -> None:
    """Run the main job on built-in defaults and print where the results are.

    Example: dereflect demo run --out runs/demo
    """
    from rich.console import Console

    from dereflect.demo.main_job import run_main_job

    run_main_job(Console(highlight=False), out, sequences, size, bench_sizes, formats, precisions)


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


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless asked; --lan: 0.0.0.0)."),
    port: int = typer.Option(8000, "--port", help="Port (0: any free port)."),
    lan: bool = typer.Option(
        False,
        "--lan",
        help="Serve to phones on this network: bind 0.0.0.0 over HTTPS with a generated certificate, print the URL and a QR code.",
    ),
    root: Optional[Path] = typer.Option(
        None, "--root", help=f"Built app folder to serve (default: ${APP_ENV}, else the app `make demo-app` built into the package)."
    ),
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
    root = root or default_root()
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
        typer.echo(
            f"TLS: a local CA signed this server's certificate; the phone warns once unless it trusts {ca_path} "
            "(install it as a CA certificate for the service worker: offline use and 'Install app')."
        )
    if lan:
        print_qr(urls[0])
    typer.echo("Ctrl+C stops the server.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()
