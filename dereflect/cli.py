"""The `dereflect` command: one typer sub-app (or command) per pipeline stage.

Each stage keeps its commands beside its code (`dereflect/<stage>/cli.py`); this module only
assembles them and turns errors into one line and an exit status (0 success, 1 bad input or
a failed step, 2 bad usage). Stage modules import torch lazily, so `--help` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from dereflect import __version__
from dereflect.errors import DereflectError, os_reason

app = typer.Typer(
    name="dereflect",
    help="Remove reflections from photos taken through glass, on the device that took them.\n\nExample: dereflect remove photo.jpg -o out/",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dereflect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Remove reflections from photos taken through glass."""


def _assemble() -> None:
    from dereflect.bench.cli import bench_command
    from dereflect.data.cli import app as data_app
    from dereflect.demo.cli import app as demo_app
    from dereflect.evaluate.cli import eval_command
    from dereflect.export.cli import export_command
    from dereflect.runtime.cli import remove_command
    from dereflect.train.cli import app as train_app

    app.add_typer(data_app, name="data", help="Make training data: multi-view sequences through glass.")
    app.add_typer(train_app, name="train", help="Train the teacher, then distil the student.")
    app.command("eval", help=eval_command.__doc__)(eval_command)
    app.command("export", help=export_command.__doc__)(export_command)
    app.command("remove", help=remove_command.__doc__)(remove_command)
    app.command("bench", help=bench_command.__doc__)(bench_command)
    app.add_typer(demo_app, name="demo", help="The main job on built-in defaults, and the phone demo app.")


_assemble()


#: Commands whose process ends with os._exit once they have finished (see `main`).
FAST_EXIT_COMMANDS = ("remove",)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: typer handles usage errors (exit 2); our errors become one line.

    `dereflect remove` from a shell (argv None) skips the interpreter's teardown: by the time the
    command returns, every output is written, closed and renamed into place, and what is left is
    tearing down OpenVINO/ONNX Runtime and thousands of module objects, 0.2 s of a 1.4-1.6 s 12 MP
    run here (speed/bench_default_path.py). stdout/stderr are flushed first. Called with argv (tests,
    other Python code) or with DEREFLECT_NO_FAST_EXIT=1 (profilers, coverage), it exits normally.
    """
    try:
        _main(argv)
    except SystemExit as exc:
        if argv is None and sys.argv[1:2] and sys.argv[1] in FAST_EXIT_COMMANDS and not os.environ.get("DEREFLECT_NO_FAST_EXIT"):
            code = 0 if exc.code is None else exc.code
            if not isinstance(code, int):  # sys.exit("message"), as Python itself would report it
                print(code, file=sys.stderr)
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise


def _main(argv: list[str] | None) -> None:
    try:
        app(args=argv, prog_name="dereflect")
    except DereflectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        # The slim install (no torch, no converters) reaching a path that needs an extra: one line naming it.
        from dereflect.extras import extra_for, missing_message

        extra = extra_for(exc.name or "", list(sys.argv[1:] if argv is None else argv))
        if extra is None:
            raise
        print(f"error: {missing_message(exc.name or '', extra)}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        # A file-system failure no stage anticipated (disk full, folder gone, permissions) is still
        # the user's to fix, not a bug report: one line naming the file, never a traceback.
        where = exc.filename if exc.filename is not None else "file system"
        print(f"error: {where}: {os_reason(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
