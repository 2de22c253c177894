"""`dereflect remove`: photos in, photos without the reflection out.

Inputs are files, folders (their images, not recursive) and glob patterns. Each output keeps its
input's format, size, bit depth (16-bit PNG/TIFF stay 16-bit), alpha, ICC profile and EXIF, and
is written atomically into -o (a folder). Inputs are never overwritten: an output that would land
on an input is refused before any work. A file that cannot be read, run or written is reported as
`error: <file>: <problem>` on stderr and skipped; the others go on, and the exit status is 1 if
any failed. The model is loaded once; each image's line says how long it took.
"""

from __future__ import annotations

import glob
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from dereflect.errors import DereflectError, os_reason

GLOB_CHARS = set("*?[")


@dataclass
class Job:
    """One input and where its outputs go."""

    source: Path
    target: Path
    reflection: Path | None


def _expand(item: str, errors: list[DereflectError]) -> list[Path]:
    """One INPUT argument -> image files (a folder's images, a glob's matches, or the file itself)."""
    from dereflect.images import IMAGE_SUFFIXES, list_images

    path = Path(item).expanduser()
    if path.is_dir():
        found = list_images(path)
        if not found:
            errors.append(DereflectError(path, f"no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"))
        return found
    if path.exists() or not GLOB_CHARS & set(item):
        return [path]  # a missing file is reported when it is read, by name
    matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
    files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
    for folder in (m for m in matches if m.is_dir()):
        files += list_images(folder)
    if not files:
        errors.append(DereflectError(item, "no image files match this pattern"))
    return files


def collect_inputs(items: list[str]) -> tuple[list[Path], list[DereflectError]]:
    """All input files, in argument order, each once; plus the arguments that named nothing."""
    errors: list[DereflectError] = []
    seen: dict[Path, Path] = {}
    for item in items:
        for path in _expand(item, errors):
            seen.setdefault(path.resolve(), path)
    return list(seen.values()), errors


def plan_outputs(inputs: list[Path], out: Path, suffix: str, save_reflection: bool) -> tuple[list[Job], list[DereflectError]]:
    """Output paths for each input; refuses any that would overwrite an input or another output."""
    if out.exists() and not out.is_dir():
        if out.resolve() in {p.resolve() for p in inputs}:
            raise DereflectError(out, "-o points at an input file; -o is the output folder and inputs are never overwritten")
        raise DereflectError(out, "-o must be a folder, and this is a file")
    if "/" in suffix or "\\" in suffix:
        raise DereflectError(None, f"--suffix must not contain a path separator, got '{suffix}'")
    from dereflect.images import IMAGE_SUFFIXES

    protected = {p.resolve() for p in inputs}
    taken: dict[Path, Path] = {}
    jobs, errors = [], []
    for src in inputs:
        # A format we read but cannot write (GIF, a file without a suffix) comes out as PNG, lossless.
        ext = src.suffix if src.suffix.lower() in IMAGE_SUFFIXES else ".png"
        target = out / f"{src.stem}{suffix}{ext}"
        reflection = out / f"{src.stem}{suffix}_reflection.png" if save_reflection else None
        problem = None
        for dst in filter(None, (target, reflection)):
            resolved = dst.resolve()
            if resolved in protected:
                problem = f"its output {dst} would overwrite an input (refused): choose another -o folder or add --suffix"
                break
            if resolved in taken:
                problem = f"its output {dst} would overwrite the output of {taken[resolved]} (same file name): run it separately"
                break
        if problem is not None:
            errors.append(DereflectError(src, problem))
            continue
        for dst in filter(None, (target, reflection)):
            taken[dst.resolve()] = src
        jobs.append(Job(src, target, reflection))
    return jobs, errors


def reflection_layer(image: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """What was removed: input minus output, clipped at zero, in the input's dtype."""
    return np.clip(image.astype(np.int32) - clean.astype(np.int32), 0, None).astype(image.dtype)


def read_job(job: Job) -> tuple[Any, list[str]]:
    """(the decoded image, or the DereflectError that says why not; the warnings said while reading)."""
    from dereflect.images import read_image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image: Any = read_image(job.source)
        except DereflectError as exc:
            image = exc
    return image, [str(w.message) for w in caught]


def _process(session, job: Job, img, on_tile) -> tuple[tuple[int, int], int, float]:
    """Run and write one decoded image (`read_job`); returns ((width, height), tiles, seconds)."""
    from dereflect.images import write_image

    plan = session.plan(*img.pixels.shape[:2])
    started = time.perf_counter()
    try:
        clean = session.run(img.pixels, on_tile=on_tile)
    except DereflectError as exc:
        raise DereflectError(job.source, exc.problem) from None
    except Exception as exc:  # noqa: BLE001 - a backend failing on one image must not stop the others
        detail = " ".join(str(exc).split())  # runtimes put newlines in their messages; errors are one line
        raise DereflectError(job.source, f"{session.backend} failed on this image ({type(exc).__name__}: {detail})") from None
    seconds = time.perf_counter() - started
    alpha = img.alpha if job.target.suffix.lower() not in (".jpg", ".jpeg") else None
    depth = img.bit_depth if job.target.suffix.lower() in (".png", ".tif", ".tiff") else 8
    write_image(job.target, clean, alpha=alpha, icc_profile=img.icc_profile, exif=img.exif, bit_depth=depth)
    if job.reflection is not None:
        write_image(job.reflection, reflection_layer(img.pixels, clean), icc_profile=img.icc_profile, bit_depth=img.bit_depth)
    return (img.pixels.shape[1], img.pixels.shape[0]), plan.count, seconds


def remove_command(
    inputs: list[str] = typer.Argument(..., help="Images, folders or globs."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    model: str = typer.Option(
        "default",
        "--model",
        help="'default' (the shipped student), a shipped student by name (student-mnv2-hq) or a checkpoint/artifact path.",
    ),
    backend: str = typer.Option("auto", "--backend", help="auto, torch, onnxruntime, openvino, coreml or tensorrt."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile side in pixels (default: only when the image is too big)."),
    save_reflection: bool = typer.Option(
        False, "--save-reflection", help="Also write the removed layer (input - output) as NAME_reflection.png."
    ),
    suffix: str = typer.Option("", "--suffix", help="Appended to output names: photo.jpg -> photo<SUFFIX>.jpg."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Use only fp32, fp16 or int8 artifacts (shipped or exported)"),
    no_verify: bool = typer.Option(False, "--no-verify", help="Run an artifact even if its sha256 does not match its manifest."),
    burst: bool = typer.Option(
        False,
        "--burst",
        help="The inputs are one burst: 3-7 frames of one scene (the middle one is cleaned) or one short video clip; "
        "--model then names a burst model (default burst-mnv2, the phone-sized one; burst-base is the multi-frame teacher).",
    ),
) -> None:
    """Remove the reflection from photos.

    Outputs keep the input's format, bit depth, alpha, ICC profile and EXIF; inputs are never
    overwritten. A file that fails is reported and skipped (exit status 1 at the end).

    Example: dereflect remove photo.jpg holiday/ -o clean/ --save-reflection

    Burst: dereflect remove --burst f1.jpg f2.jpg f3.jpg f4.jpg f5.jpg -o clean/ (or --burst clip.mp4)
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dereflect.runtime import load

    stdout = Console(highlight=False, soft_wrap=True)
    stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    if burst:  # dereflect/burst/cli.py: frames or a clip -> one output
        from dereflect.burst.cli import remove_burst

        say, warn = (lambda line: stdout.print(line, markup=False)), (lambda line: stderr.print(line, markup=False))
        remove_burst(
            inputs,
            out,
            model=model,
            backend=backend,
            precision=precision,
            save_reflection=save_reflection,
            suffix=suffix,
            verify=not no_verify,
            say=say,
            warn=warn,
        )
        return

    files, failures = collect_inputs(inputs)
    jobs, refused = plan_outputs(files, out, suffix, save_reflection)
    failures += refused
    for exc in failures:
        stderr.print(f"error: {exc}", markup=False)
    if not jobs:
        raise DereflectError(None, "no images to process" if not failures else "nothing to do: every input failed (see above)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DereflectError(out, f"cannot create the output folder ({os_reason(exc)})") from None

    # The model loads on a thread while the first photo decodes here (both release the GIL: 0.15 s of
    # a 12 MP JPEG's wall time). A load error is still the run's error, raised before any image runs.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dereflect-load") as pool:
        loading = pool.submit(load, model, backend, verify=not no_verify, precision=precision, tile=tile)
        first = read_job(jobs[0])
        session = loading.result()
    stdout.print(f"backend: {session.describe()}", markup=False)

    done, pixels, busy = 0, 0, 0.0
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    with progress:
        task = progress.add_task("removing reflections", total=len(jobs))
        for k, job in enumerate(jobs):
            tiles_done = [0]
            image, said = first if k == 0 else read_job(job)

            def on_tile(job=job, tiles_done=tiles_done) -> None:  # bound now: called during this job only
                tiles_done[0] += 1
                progress.update(task, description=f"{job.source.name} (tile {tiles_done[0]})")

            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        if isinstance(image, DereflectError):
                            raise image
                        (w, h), tiles, seconds = _process(session, job, image, on_tile)
                    finally:  # said even when the image then fails
                        for message in said + [str(w.message) for w in caught]:
                            progress.console.print(f"warning: {message}", markup=False)
            except DereflectError as exc:
                failures.append(exc)
                progress.console.print(f"error: {exc}", markup=False)
            else:
                done += 1
                pixels += w * h
                busy += seconds
                stdout.print(
                    f"{job.source} -> {job.target} ({w}x{h}, {tiles} tile{'s' if tiles > 1 else ''}, {seconds:.2f} s on {session.backend})",
                    markup=False,
                )
            progress.advance(task)

    rate = f", {busy / (pixels / 1e6):.2f} s/MP" if pixels else ""
    stdout.print(f"{done} image(s) written to {out}, {len(failures)} failed ({busy:.1f} s on {session.backend}{rate})", markup=False)
    if failures:
        sys.stdout.flush()
        raise typer.Exit(code=1)
