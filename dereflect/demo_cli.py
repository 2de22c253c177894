"""`dereflect demo run` (the main job on built-in defaults) and `dereflect demo serve` (phone app)."""

from __future__ import annotations

from pathlib import Path

import typer

from dereflect.errors import NotLandedError

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the results go."),
) -> None:
    """Run the main job on built-in defaults and print where the results are.

    Example: dereflect demo run --out runs/demo
    """
    raise NotLandedError("`dereflect demo run`", "the Foundation issue")


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless asked)."),
    port: int = typer.Option(8000, "--port", help="Port."),
) -> None:
    """Serve the phone camera demo app.

    Example: dereflect demo serve --port 8000
    """
    raise NotLandedError("`dereflect demo serve`", "the phone-demo issue")
