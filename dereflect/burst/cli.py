"""`dereflect remove --burst`: a few frames or one short clip in, the reference frame without its reflection out.

Called by runtime/cli.py's `remove` when `--burst` is given (one command for people; this module
keeps burst's own steps). Frames that cannot be used as a burst (sizes differ, no registration, a
cut, too little overlap) are one `warning:` line and the single-image student runs on the
reference frame instead: the user still gets a clean photo. What cannot be read at all (a
missing or corrupt file, a video PyAV cannot decode) is an error, exit 1.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dereflect.errors import DereflectError, os_reason


def _targets(
    burst_source: Path, reference_suffix: str, out: Path, suffix: str, save_reflection: bool, inputs: list[Path]
) -> tuple[Path, Path | None]:
    from dereflect.images import IMAGE_SUFFIXES

    if out.exists() and not out.is_dir():
        raise DereflectError(out, "-o must be a folder, and this is a file")
    if "/" in suffix or "\\" in suffix:
        raise DereflectError(None, f"--suffix must not contain a path separator, got '{suffix}'")
    ext = reference_suffix if reference_suffix.lower() in IMAGE_SUFFIXES else ".png"
    target = out / f"{burst_source.stem}{suffix}{ext}"
    reflection = out / f"{burst_source.stem}{suffix}_reflection.png" if save_reflection else None
    protected = {p.resolve() for p in inputs}
    for dst in filter(None, (target, reflection)):
        if dst.resolve() in protected:
            raise DereflectError(
                burst_source, f"its output {dst} would overwrite an input (refused): choose another -o folder or add --suffix"
            )
    return target, reflection


def _fallback_frame(paths: list[Path], problem: DereflectError):
    """The reference frame to give the single-image student: (pixels, LoadedImage or None, label)."""
    from dereflect.burst.frames import decode, is_video
    from dereflect.images import read_image

    if is_video(paths[0]):
        index = getattr(problem, "reference_index", 0)
        frames = dict(decode(paths[0], keep={index}))
        if index not in frames:
            raise DereflectError(paths[0], f"frame {index} could not be decoded for the single-image fallback")
        return frames[index], None, f"frame {index}"
    ref = paths[len(paths) // 2]
    img = read_image(ref)
    return img.pixels, img, ref.name


def remove_burst(
    items: list[str],
    out: Path,
    *,
    model: str = "default",
    backend: str = "auto",
    precision: str | None = None,
    save_reflection: bool = False,
    suffix: str = "",
    verify: bool = True,
    say=print,
    warn=print,
) -> Path:
    """Run one burst; returns the written output. `say`/`warn` print a line to stdout / stderr."""
    from dereflect.burst import frames as frames_mod
    from dereflect.burst import pipeline

    paths = _expand(items)
    videos = [p for p in paths if frames_mod.is_video(p)]
    source = videos[0] if videos else (paths[len(paths) // 2] if paths else Path(items[0]))
    try:
        burst = frames_mod.load_burst(paths)
    except frames_mod.BurstProblem as problem:
        pixels, image, label = _fallback_frame(paths, problem)
        warn(f"warning: {problem}; falling back to the single-image student on {label}")
        target, reflection = _targets(source, source.suffix if not videos else ".png", out, suffix, save_reflection, paths)
        return _student(pixels, image, target, reflection, out, say)
    target, reflection = _targets(burst.source, burst.source.suffix if burst.image else ".png", out, suffix, save_reflection, paths)
    net = pipeline.load_model(model, backend, verify=verify, precision=precision)
    say(f"backend: {net.describe()}")
    say(f"burst: {burst.source}: {burst.describe()}")
    for note in burst.notes:
        say(f"note: {note}")
    try:
        result = pipeline.remove(burst, net)
    except DereflectError as exc:
        raise DereflectError(burst.source, exc.problem) from None
    except Exception as exc:  # noqa: BLE001 - a backend failing on these frames is one line, not a traceback
        raise DereflectError(
            burst.source, f"{net.backend} failed on this burst ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        ) from None
    for note in result.notes:
        say(f"note: {note}")
    _mkdir(out)
    _write(target, reflection, burst.reference, result.clean, burst.image)
    h, w = burst.reference.shape[:2]
    say(f"{burst.source} -> {target} ({w}x{h}, model at {result.work_hw[1]}x{result.work_hw[0]}, {result.seconds:.2f} s on {net.backend})")
    return target


def _expand(items: list[str]) -> list[Path]:
    """The burst's files in argument order: a folder's images (sorted), a glob's matches, or the file."""
    import glob

    from dereflect.images import list_images

    paths: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise DereflectError(path, "no images in this folder")
            paths += found
        elif path.exists() or not set("*?[") & set(item):
            paths.append(path)  # a missing file is reported when it is read, by name
        else:
            matches = sorted(Path(m) for m in glob.glob(str(path)) if Path(m).is_file())
            if not matches:
                raise DereflectError(item, "no files match this pattern")
            paths += matches
    return list(dict.fromkeys(paths))


def reflection_layer(image: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """What was removed: input minus output, clipped at zero, in the input's dtype (as `dereflect remove` writes it)."""
    return np.clip(image.astype(np.int32) - clean.astype(np.int32), 0, None).astype(image.dtype)


def _mkdir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DereflectError(out, f"cannot create the output folder ({os_reason(exc)})") from None


def _write(target: Path, reflection: Path | None, reference, clean, image) -> None:
    from dereflect.images import write_image

    icc = image.icc_profile if image is not None else None
    if image is not None:
        alpha = image.alpha if target.suffix.lower() not in (".jpg", ".jpeg") else None
        depth = image.bit_depth if target.suffix.lower() in (".png", ".tif", ".tiff") else 8
        write_image(target, clean, alpha=alpha, icc_profile=icc, exif=image.exif, bit_depth=depth)
    else:
        write_image(target, clean)
    if reflection is not None:
        bits = image.bit_depth if image is not None else 8
        write_image(reflection, reflection_layer(reference, clean), icc_profile=icc, bit_depth=bits)


def _student(pixels, image, target: Path, reflection: Path | None, out: Path, say) -> Path:
    """The fallback: the default single-image student on the reference frame, tiled as for photos."""
    from dereflect.runtime import load

    session = load("default")
    say(f"backend: {session.describe()}")
    started = time.perf_counter()
    clean = session.run(pixels)
    _mkdir(out)
    _write(target, reflection, pixels, clean, image)
    h, w = pixels.shape[:2]
    say(f"{target.name} written ({w}x{h}, single-image student, {time.perf_counter() - started:.2f} s on {session.backend})")
    return target
