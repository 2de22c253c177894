"""Coverage-guided fuzz target (atheris / libFuzzer): image decoding + the runtime's preprocessing.

Each input is the bytes of a would-be image file. It is written to a scratch file and read with
dereflect.images.read_image, exactly as `dereflect remove` reads a photo; whatever decodes then goes
through the runtime's own padding and tiling (runtime.Session.run with a pointwise identity
"backend", once whole and once in 16-px tiles) and is written back as PNG. The contract under
test: bad bytes raise DereflectError and nothing else; good bytes give an RGB array that survives
the preprocessing unchanged (identity in, identity out, exact) and a PNG round trip.

Any other exception, a crash or a hang is a finding: libFuzzer saves the input in
fuzz/findings/ (see `make fuzz`), and each one becomes a case in tests/test_fuzz_regressions.py.

    python fuzz/fuzz_decode.py RUN_CORPUS fuzz/corpus/decode -max_total_time=600 \
        -artifact_prefix=fuzz/findings/ -timeout=20 -rss_limit_mb=3072
    python fuzz/fuzz_decode.py fuzz/findings/crash-...        # re-run one input

With DEREFLECT_FUZZ_RECORD=DIR the target does not stop at the first finding: each distinct
failure (exception type + the frame that raised it) is saved once in DIR as `<signature>.bin`
with its traceback beside it, and fuzzing goes on. That is how a campaign catalogues every
bug before any is fixed; a strict run (the default, and `make fuzz`) stops at the first.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import atheris
import numpy as np  # not instrumented: atheris' comparison hooks keep numpy's temporaries alive

#: What coverage guides the fuzzer through: Pillow's plugins, tifffile, and our own code.
INSTRUMENTED = ["PIL", "tifffile", "dereflect"]

with atheris.instrument_imports(include=INSTRUMENTED):
    from PIL import Image

    Image.init()  # import every Pillow plugin now, inside the block, so each is instrumented
    import tifffile  # noqa: F401 - 16-bit TIFF decoding

    from dereflect.errors import DereflectError
    from dereflect.images import read_image, write_image
    from dereflect.runtime.backends import Backend
    from dereflect.runtime.session import Session

#: Pixel budget of one fuzz input. Smaller than read_image's 100 MP default only so libFuzzer
#: spends its time on parsing rather than on filling huge buffers; the size check is the same code.
MAX_PIXELS = 1 << 20
#: Largest image also run tile by tile (16-px tiles of a bigger image are many small runs).
MAX_TILED_PIXELS = 1 << 14
#: Where each input is written to be read back (in RAM when possible). The files are named by
#: process and removed after every input: libFuzzer ends the process from C, so atexit never runs.
SCRATCH = Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()) / f"dereflect-fuzz-{os.getuid()}"


class IdentityBackend(Backend):
    """A pointwise "network": returns its input, after checking the contract backends rely on."""

    name = "identity"

    def __init__(self) -> None:
        pass

    def infer(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[:2] == (1, 3), batch.shape
        assert batch.shape[2] % 8 == 0 and batch.shape[3] % 8 == 0, batch.shape
        assert np.isfinite(batch).all() and batch.min() >= 0.0 and batch.max() <= 1.0
        return batch.copy()


WHOLE = Session(IdentityBackend(), None)
TILED = Session(IdentityBackend(), None, tile=16, overlap=8)


def check_bytes(data: bytes, scratch: Path = SCRATCH) -> None:
    """One fuzz input: DereflectError is the only acceptable failure; anything decoded must
    come through padding/tiling and a PNG round trip unchanged."""
    src, out = scratch / f"input-{os.getpid()}", scratch / f"output-{os.getpid()}.png"
    try:
        _check(data, src, out)
    finally:
        src.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def _check(data: bytes, src: Path, out: Path) -> None:
    src.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MultiFrameWarning, Pillow's own warnings: not failures
            img = read_image(src, max_pixels=MAX_PIXELS)
    except DereflectError as exc:
        assert exc.path == str(src), f"error names {exc.path!r}, not the file"
        return
    pixels = img.pixels
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.flags.c_contiguous, pixels.shape
    assert pixels.dtype == (np.uint8 if img.bit_depth == 8 else np.uint16), (pixels.dtype, img.bit_depth)
    assert img.alpha is None or img.alpha.shape == pixels.shape[:2]
    assert np.array_equal(WHOLE.run(pixels), pixels), "padding changed the image"
    if pixels.shape[0] * pixels.shape[1] <= MAX_TILED_PIXELS:
        assert np.array_equal(TILED.run(pixels), pixels), "tiling changed the image"
    write_image(out, pixels, alpha=img.alpha, icc_profile=img.icc_profile, exif=img.exif, bit_depth=img.bit_depth)
    back = read_image(out, max_pixels=MAX_PIXELS)
    assert np.array_equal(back.pixels, pixels), "PNG round trip changed the pixels"


def recording(target, folder: Path):
    """Wrap `target` so that failures are saved once per signature in `folder` instead of raised."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(data: bytes) -> None:
        try:
            target(data)
        except Exception as exc:  # noqa: BLE001 - recording every kind of failure is the point
            frames = traceback.extract_tb(exc.__traceback__)
            where = next((f for f in reversed(frames) if "fuzz_decode" not in f.filename), frames[-1])
            sig = f"{type(exc).__name__}-{Path(where.filename).stem}-{where.lineno}"
            name = f"{sig}-{hashlib.sha1(sig.encode()).hexdigest()[:8]}"
            if not (folder / f"{name}.bin").exists():
                (folder / f"{name}.bin").write_bytes(data)
                (folder / f"{name}.txt").write_text("".join(traceback.format_exception(exc)))
                print(f"RECORDED {name}", file=sys.stderr, flush=True)

    return run


def main() -> None:
    SCRATCH.mkdir(parents=True, exist_ok=True)
    record = os.environ.get("DEREFLECT_FUZZ_RECORD")
    atheris.Setup(sys.argv, recording(check_bytes, Path(record)) if record else check_bytes)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
