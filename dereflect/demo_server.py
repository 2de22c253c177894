"""`dereflect demo serve`: serves the phone camera demo app (android_demo/)."""

from __future__ import annotations

import typer

from dereflect.errors import NotLandedError


def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless asked)."),
    port: int = typer.Option(8000, "--port", help="Port."),
) -> None:
    """Serve the phone camera demo app.

    Example: dereflect demo serve --port 8000
    """
    raise NotLandedError("`dereflect demo serve`", "the phone-demo issue")
