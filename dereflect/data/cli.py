"""`dereflect data ...` commands."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from dereflect.errors import DereflectError, UsageError, os_reason

app = typer.Typer(no_args_is_help=True)

PREVIEW_ROWS = 4


@app.command("synth")
def synth_command(
    out: Path = typer.Option(..., "--out", help="Folder to write the sequences into."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of natural photos (default: scikit-image's bundled photos)."),
    sequences: int = typer.Option(8, "--sequences", min=1, help="How many sequences."),
    frames: int = typer.Option(5, "--frames", help="Frames per sequence (3 or 5)."),
    size: int = typer.Option(256, "--size", min=16, help="Frame side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same data)."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also write a contact sheet PNG of a few sequences."),
) -> None:
    """Synthesise multi-view sequences through glass (frames, T and R layers, true flows).

    Writes OUT/seq_00000/frame_000.png ..., transmission/ and reflection/ (16-bit PNG), flow_T.npy, flow_R.npy, params.json, and OUT/dataset.json. Sequence k is item k of SyntheticSequences(photos, seed=SEED), the set the teacher trains on.

    Example: dereflect data synth --images photos/ --out data/synth --sequences 8 --frames 5 --size 128
    """
    typer.echo(synthesize_folder(out, images, sequences=sequences, frames=frames, size=size, seed=seed, preview=preview))


def synthesize_folder(
    out: Path,
    images: Path | None = None,
    *,
    sequences: int = 8,
    frames: int = 5,
    size: int = 256,
    seed: int = 0,
    preview: Path | None = None,
) -> str:
    """`dereflect data synth` as a library function (the demo's main job calls it); returns the summary line."""
    if frames < 3 or frames % 2 == 0:
        raise UsageError(None, f"--frames must be odd and at least 3 (3 or 5), got {frames}")
    if preview is not None and preview.suffix.lower() != ".png":
        raise UsageError(preview, "--preview must name a .png file")
    if out.exists() and not out.is_dir():
        raise DereflectError(out, "exists and is not a folder")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from dereflect.data.datasets import draw_sequence
    from dereflect.data.photos import load_photos
    from dereflect.data.synth import SynthConfig, contact_sheet, write_sequence

    photos = load_photos(images)  # every photo is read (and checked) before any output
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DereflectError(out, f"cannot create the output folder ({os_reason(exc)})") from None
    for stale in out.glob(".seq_*.tmp"):  # a killed run's half-written sequence
        shutil.rmtree(stale, ignore_errors=True)
    shown = []
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("synth", total=sequences)
        for k in range(sequences):
            seq = draw_sequence(photos, k, seed=seed, n_frames=frames, size=size, augment=True)
            _write_whole(seq, out / f"seq_{k:05d}", write_sequence)
            if preview is not None and len(shown) < PREVIEW_ROWS:
                shown.append(seq)
            bar.advance(task)
    info = {
        "generator": "dereflect data synth",
        "images": str(images) if images else "scikit-image bundled photos",
        "photos": len(photos),
        "sequences": sequences,
        "frames": frames,
        "size": size,
        "seed": seed,
        "config": asdict(SynthConfig()),
    }
    from dereflect.files import write_bytes_atomic

    try:
        write_bytes_atomic(out / "dataset.json", json.dumps(info, indent=1).encode())
    except OSError as exc:
        raise DereflectError(out / "dataset.json", f"could not write ({os_reason(exc)})") from None
    if preview is not None:
        _write_preview(preview, contact_sheet(shown))
    return f"wrote {sequences} sequences of {frames} frames ({size}x{size}) to {out}" + (f"; preview {preview}" if preview else "")


def _write_whole(seq, folder: Path, write_sequence) -> None:
    """Write a sequence into a hidden temp folder and rename it into place: a full disk or a kill
    never leaves a half sequence that training would later pick up as data."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_sequence(seq, tmp)
        if folder.exists():
            shutil.rmtree(folder)  # re-running synth into the same folder replaces its sequences
        os.replace(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DereflectError(folder, f"could not write the sequence ({_reason(exc, folder.parent)})") from None
    except DereflectError as exc:  # write_image's own error names the temp folder: name the real one
        shutil.rmtree(tmp, ignore_errors=True)
        raise DereflectError(folder, f"could not write the sequence: {Path(exc.path or '').name}: {exc.problem}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _reason(exc: OSError, folder: Path) -> str:
    """numpy reports a short write as '24576 requested and 5088 written' with no errno: say why."""
    if exc.strerror:
        return exc.strerror
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return f"{os.strerror(28)}: {exc}"
    except OSError:
        pass
    return str(exc)


def _write_preview(path: Path, sheet) -> None:
    from dereflect.images import write_image

    write_image(path, sheet)
