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


from dereflect.demo_server import serve_command  # noqa: E402  (the phone demo's server lives beside its app)

app.command("serve", help=serve_command.__doc__)(serve_command)
