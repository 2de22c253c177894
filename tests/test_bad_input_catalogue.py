"""The bad-input catalogue: every row of docs/BAD_INPUT.md, run through the real CLI.

ROWS below is the single source: the test runs each row (a few as `python -m dereflect ...`
subprocesses, to prove no traceback reaches a real terminal; the rest through `main()`), and
`python tests/test_bad_input_catalogue.py` writes docs/BAD_INPUT.md from the same list, which
`test_doc_matches_rows` checks, so the table and the tests cannot drift.

Each row asserts: the exact `error:` / `warning:` lines the user sees (a `…` in a message stands
for one run-dependent token, e.g. a sha256 prefix), the exit status, no "Traceback", an answer
within a time limit, every input file byte-identical afterwards (sha256), and exactly the
expected files in the output folder (none for a refusal, no temp or partial files ever).
Some "bad" inputs are legitimately accepted (16-bit, CMYK, palette, alpha, animated, 1x1); their
rows say what happens and `ACCEPTED_CHECKS` checks that it happened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import signal
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dereflect.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BAD_INPUT.md"
TIMEOUT_S = 120
#: How each placeholder appears in the doc (the test uses real temp paths).
DOC_NAMES = {"in": "in", "art": "art", "ck": "ck", "out": "out", "keys": "every training config key, sorted"}


@dataclass(frozen=True)
class Row:
    id: str
    kind: str  # image | artifact | argument
    what: str  # the bad input, for people
    argv: tuple[str, ...]  # after `dereflect`; {in} {art} {ck} {out} are filled in
    says: tuple[str, ...]  # the exact error:/warning: lines on stderr, in order
    exit: int
    outputs: tuple[str, ...] = ()  # files that must be in {out} afterwards (nothing else)
    outcome: str = "refused"  # what happens, for the doc
    subprocess: bool = False  # run as `python -m dereflect` (else main() in this process)


def _remove(name: str, *extra: str) -> tuple[str, ...]:
    return ("remove", f"{{in}}/{name}", "-o", "{out}", *extra)


#: The training config's keys, as the error lists them (the list grows with the config).
_CONFIG_KEYS = ", ".join(sorted(f.name for f in dataclasses.fields(TrainConfig)))

ROWS: list[Row] = [
    # ---------------------------------------------------------------- images (`dereflect remove`)
    Row(
        "image-empty",
        "image",
        "empty file (0 bytes)",
        _remove("empty.png"),
        ("error: {in}/empty.png: empty file (0 bytes)",),
        1,
        subprocess=True,
    ),
    Row(
        "image-truncated-png",
        "image",
        "PNG cut in half",
        _remove("truncated.png"),
        ("error: {in}/truncated.png: corrupt or truncated image (image file is truncated)",),
        1,
    ),
    Row(
        "image-truncated-jpeg",
        "image",
        "JPEG cut in half",
        _remove("truncated.jpg"),
        ("error: {in}/truncated.jpg: corrupt or truncated image (image file is truncated (… bytes not processed))",),
        1,
    ),
    Row(
        "image-corrupt-header",
        "image",
        "PNG whose IHDR header is damaged (bad CRC)",
        _remove("bad-header.png"),
        ("error: {in}/bad-header.png: not an image (or a format Pillow cannot read)",),
        1,
    ),
    Row(
        "image-not-an-image",
        "image",
        "a text file named .png",
        _remove("notes.png"),
        ("error: {in}/notes.png: not an image (or a format Pillow cannot read)",),
        1,
    ),
    Row("image-missing", "image", "a file that does not exist", _remove("gone.jpg"), ("error: {in}/gone.jpg: no such file",), 1),
    Row(
        "image-zero-size",
        "image",
        "PNG header declaring 0x0 pixels",
        _remove("zero.png"),
        ("error: {in}/zero.png: zero-size image (0x0 pixels)",),
        1,
    ),
    Row(
        "image-100-megapixel",
        "image",
        "PNG declaring 10240x10240 (105 MP, over the 100 MP limit)",
        _remove("huge.png"),
        ("error: {in}/huge.png: too many pixels (10240x10240 = 104,857,600; limit 100,000,000)",),
        1,
        outcome="refused from the header, before any pixel is decoded",
        subprocess=True,
    ),
    Row(
        "image-decompression-bomb",
        "image",
        "tiny PNG declaring 50000x50000 (2.5 GP: a decompression bomb)",
        _remove("bomb.png"),
        (
            "error: {in}/bomb.png: too many pixels to decode safely (Image size (2500000000 pixels) exceeds limit of "
            "178956970 pixels, could be decompression bomb DOS attack.)",
        ),
        1,
        outcome="refused from the header, before any pixel is decoded",
    ),
    Row(
        "image-float-tiff",
        "image",
        "32-bit float TIFF (mode F)",
        _remove("float.tif"),
        ("error: {in}/float.tif: unsupported image mode 'F' (expected 8/16-bit grey, palette, RGB, RGBA or CMYK)",),
        1,
    ),
    Row(
        "image-wrong-extension",
        "image",
        "a PNG named .jpg",
        _remove("png-named.jpg"),
        (),
        0,
        ("png-named.jpg",),
        "accepted: read by content; written as the name says (JPEG)",
    ),
    Row("image-1x1", "image", "1x1 pixel PNG", _remove("one.png"), (), 0, ("one.png",), "accepted: padded to 8x8 for the network, 1x1 out"),
    Row("image-16-bit", "image", "16-bit RGB PNG", _remove("deep.png"), (), 0, ("deep.png",), "accepted: 16-bit in, 16-bit PNG out"),
    Row("image-cmyk", "image", "CMYK JPEG", _remove("cmyk.jpg"), (), 0, ("cmyk.jpg",), "accepted: converted to sRGB, RGB JPEG out"),
    Row("image-palette", "image", "palette (P mode) PNG", _remove("palette.png"), (), 0, ("palette.png",), "accepted: expanded to RGB"),
    Row("image-alpha", "image", "RGBA PNG", _remove("alpha.png"), (), 0, ("alpha.png",), "accepted: alpha passed through unchanged"),
    Row(
        "image-animated-gif",
        "image",
        "2-frame animated GIF",
        _remove("anim.gif"),
        ("warning: {in}/anim.gif: has 2 frames; using the first",),
        0,
        ("anim.png",),
        "accepted: first frame, with a warning; written as PNG (GIF is not written)",
    ),
    Row(
        "image-animated-webp",
        "image",
        "2-frame animated WebP",
        _remove("anim.webp"),
        ("warning: {in}/anim.webp: has 2 frames; using the first",),
        0,
        ("anim.webp",),
        "accepted: first frame, with a warning",
    ),
    Row(
        "image-one-bad-among-good",
        "image",
        "a folder with one truncated PNG among good photos",
        ("remove", "{in}/mixed", "-o", "{out}"),
        ("error: {in}/mixed/b-truncated.png: corrupt or truncated image (image file is truncated)",),
        1,
        ("a.png", "c.png"),
        "the bad file is named and skipped, the others are written, exit 1",
    ),
    Row(
        "image-empty-folder",
        "image",
        "a folder with no images",
        ("remove", "{in}/empty-dir", "-o", "{out}"),
        (
            "error: {in}/empty-dir: no images in this folder (looked for .bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)",
            "error: nothing to do: every input failed (see above)",
        ),
        1,
    ),
    Row(
        "image-glob-no-match",
        "image",
        "a glob that matches nothing",
        ("remove", "{in}/*.heic", "-o", "{out}"),
        ("error: {in}/*.heic: no image files match this pattern", "error: nothing to do: every input failed (see above)"),
        1,
    ),
    # ---------------------------------------------------------------- artifacts and checkpoints
    Row(
        "onnx-truncated",
        "artifact",
        "ONNX cut in half (manifest beside it)",
        _remove("good.png", "--model", "{art}/truncated.onnx"),
        ("error: {art}/truncated.onnx: sha256 mismatch: manifest says …, file is … (changed or corrupted after export)",),
        1,
    ),
    Row(
        "onnx-truncated-no-verify",
        "artifact",
        "the same, with --no-verify",
        _remove("good.png", "--model", "{art}/truncated.onnx", "--no-verify"),
        (
            "error: {art}/truncated.onnx: ONNX Runtime cannot load this model ([ONNXRuntimeError] : 7 : INVALID_PROTOBUF : "
            "Load model from {art}/truncated.onnx failed:Protobuf parsing failed.)",
        ),
        1,
        subprocess=True,
    ),
    Row(
        "onnx-sha256-mismatch",
        "artifact",
        "ONNX with one byte changed after export",
        _remove("good.png", "--model", "{art}/flipped.onnx"),
        ("error: {art}/flipped.onnx: sha256 mismatch: manifest says …, file is … (changed or corrupted after export)",),
        1,
    ),
    Row(
        "onnx-manifest-missing",
        "artifact",
        "ONNX without its manifest",
        _remove("good.png", "--model", "{art}/bare.onnx"),
        (
            "error: {art}/bare.onnx: no manifest beside this artifact (bare.onnx.json), so its bytes cannot be checked; "
            "re-export it, or pass verify=False (--no-verify) to run it anyway",
        ),
        1,
    ),
    Row(
        "onnx-manifest-cut",
        "artifact",
        "manifest JSON cut short",
        _remove("good.png", "--model", "{art}/cut-manifest.onnx"),
        (
            "error: {art}/cut-manifest.onnx.json: corrupt manifest: not valid JSON (Unterminated string starting at: line 1 column … (char …))",
        ),
        1,
    ),
    Row(
        "onnx-manifest-edited",
        "artifact",
        "manifest edited by hand (multiple_of: 0)",
        _remove("good.png", "--model", "{art}/edited.onnx"),
        ("error: {art}/edited.onnx.json: manifest constraints need an integer 'multiple_of' in 1..1024",),
        1,
    ),
    Row(
        "onnx-wrong-input-shape",
        "artifact",
        "ONNX whose input has 4 channels (valid manifest)",
        _remove("good.png", "--model", "{art}/rgba-input.onnx"),
        (
            "error: {art}/rgba-input.onnx: model input 'input' is float32 (?, 4, ?, ?); dereflect runs image models with a "
            "float32 (N, 3, H, W) input",
        ),
        1,
        outcome="refused at load, before any photo",
    ),
    Row(
        "ckpt-teacher-for-remove",
        "artifact",
        "a teacher checkpoint given to remove",
        _remove("good.png", "--model", "{ck}/teacher.safetensors"),
        ("error: {ck}/teacher.safetensors: expected a student checkpoint, got 'teacher-small'",),
        1,
    ),
    Row(
        "ckpt-teacher-for-export",
        "artifact",
        "a teacher checkpoint given to export",
        ("export", "{ck}/teacher.safetensors", "--out", "{out}"),
        ("error: {ck}/teacher.safetensors: expected a student checkpoint, got 'teacher-small'",),
        1,
    ),
    Row(
        "ckpt-student-as-teacher",
        "artifact",
        "a student checkpoint given as --teacher",
        ("train", "student", "--teacher", "{ck}/student.safetensors", "--out", "{out}/run"),
        ("error: {ck}/student.safetensors: expected a teacher checkpoint, got 'student-nano'",),
        1,
    ),
    Row(
        "ckpt-truncated",
        "artifact",
        "safetensors checkpoint cut in half",
        ("eval", "{ck}/truncated.safetensors", "--pairs", "{in}/pairs"),
        (
            "error: {ck}/truncated.safetensors: not a readable safetensors checkpoint (Error while deserializing header: "
            "incomplete metadata, file not fully covered)",
        ),
        1,
    ),
    Row(
        "ckpt-foreign",
        "artifact",
        "a safetensors file from another project",
        _remove("good.png", "--model", "{ck}/foreign.safetensors"),
        ("error: {ck}/foreign.safetensors: safetensors file has no dereflect model header (not a dereflect checkpoint)",),
        1,
    ),
    Row(
        "model-not-a-model",
        "artifact",
        "a photo given as --model",
        _remove("good.png", "--model", "{in}/good.png"),
        (
            "error: {in}/good.png: not a model: expected a .safetensors checkpoint, an exported artifact (.onnx, .ort, "
            "OpenVINO IR folder, .mlpackage, .engine) or a folder an export wrote",
        ),
        1,
    ),
    # ---------------------------------------------------------------- arguments
    Row(
        "out-equals-input",
        "argument",
        "-o is the input file",
        ("remove", "{in}/good.png", "-o", "{in}/good.png"),
        ("error: {in}/good.png: -o points at an input file; -o is the output folder and inputs are never overwritten",),
        1,
        subprocess=True,
    ),
    Row(
        "out-is-input-folder",
        "argument",
        "-o is the inputs' own folder",
        ("remove", "{in}/good.png", "-o", "{in}"),
        (
            "error: {in}/good.png: its output {in}/good.png would overwrite an input (refused): choose another -o folder or add --suffix",
            "error: nothing to do: every input failed (see above)",
        ),
        1,
    ),
    Row(
        "out-unwritable",
        "argument",
        "-o inside a regular file",
        ("remove", "{in}/good.png", "-o", "{in}/notes.png/clean"),
        ("error: {in}/notes.png/clean: cannot create the output folder (Not a directory)",),
        1,
    ),
    Row(
        "export-out-unwritable",
        "argument",
        "export --out inside a regular file",
        ("export", "{ck}/student.safetensors", "--out", "{in}/notes.png/art"),
        ("error: {in}/notes.png/art: cannot create the output folder (Not a directory)",),
        1,
    ),
    Row(
        "eval-json-unwritable",
        "argument",
        "eval --json inside a regular file",
        ("eval", "identity", "--pairs", "{in}/pairs", "--json", "{in}/notes.png/s.json"),
        ("error: {in}/notes.png/s.json: cannot write here: {in}/notes.png is not a folder",),
        1,
        outcome="refused before any scoring",
    ),
    Row(
        "synth-out-unwritable",
        "argument",
        "data synth --out inside a regular file",
        ("data", "synth", "--out", "{in}/notes.png/seqs"),
        ("error: {in}/notes.png/seqs: cannot create the output folder (Not a directory)",),
        1,
    ),
    Row(
        "export-unknown-format",
        "argument",
        "--format tfjs",
        ("export", "{ck}/student.safetensors", "--format", "tfjs", "--out", "{out}"),
        ("error: unknown format 'tfjs'; choose one of onnx, ort, openvino, coreml, tensorrt, pte, tflite or all",),
        2,
        subprocess=True,
    ),
    Row(
        "export-unknown-precision",
        "argument",
        "--precision int4",
        ("export", "{ck}/student.safetensors", "--precision", "int4", "--out", "{out}"),
        ("error: unknown precision 'int4'; choose one of fp32, fp16, int8",),
        2,
    ),
    Row(
        "remove-unknown-precision",
        "argument",
        "remove --precision int4",
        _remove("good.png", "--precision", "int4"),
        ("error: unknown precision 'int4'; choose one of fp32, fp16, int8",),
        2,
    ),
    Row(
        "remove-unknown-backend",
        "argument",
        "--backend quantum",
        _remove("good.png", "--backend", "quantum"),
        ("error: unknown backend 'quantum'; choose auto or one of torch, onnxruntime, openvino, coreml, tensorrt, executorch, litert",),
        2,
    ),
    Row(
        "remove-tile-too-small",
        "argument",
        "--tile 4",
        _remove("good.png", "--tile", "4"),
        ("error: tile size must be at least 16 pixels, got 4",),
        2,
    ),
    Row(
        "synth-even-frames",
        "argument",
        "data synth --frames 4",
        ("data", "synth", "--out", "{out}", "--frames", "4"),
        ("error: --frames must be odd and at least 3 (3 or 5), got 4",),
        2,
    ),
    Row(
        "train-unknown-config-key",
        "argument",
        "a config with a typo (stpes)",
        ("train", "teacher", "--config", "{in}/typo.yaml", "--out", "{out}/run"),
        ("error: {in}/typo.yaml: unknown config key 'stpes' (known: {keys})",),
        1,
    ),
    Row(
        "train-resume-nothing",
        "argument",
        "--resume in an empty run folder",
        ("train", "teacher", "--out", "{out}/run", "--resume"),
        ("error: {out}/run/state.pt: nothing to resume: no state.pt in the run folder",),
        1,
    ),
    Row(
        "eval-pairs-missing",
        "argument",
        "--pairs folder that does not exist",
        ("eval", "identity", "--pairs", "{in}/no-pairs"),
        ("error: {in}/no-pairs: no such folder",),
        1,
    ),
]


# ------------------------------------------------------------------------------------ inputs


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature + IHDR claiming width x height, with a tiny IDAT: what a bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _export_onnx(model, path: Path, channels: int = 3) -> None:
    """A real ONNX of the student (torch's exporter) with a real manifest (the export stage's writer)."""
    import torch

    from dereflect.export.manifest import build_manifest, write_manifest

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x[:, :3])

    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrap().eval(),
            torch.rand(1, channels, 32, 32),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["transmission"],
            dynamic_axes={"input": axes, "transmission": axes},
        )
    write_manifest(
        path,
        build_manifest(
            fmt="onnx",
            precision="fp32",
            runtime="onnxruntime",
            artifact=path,
            source={"model": "student-nano"},
            parity={"status": "passed"},
        ),
    )


def build_inputs(root: Path) -> dict[str, Path]:
    """Every bad (and good) input the rows name, under root/in, root/art, root/ck."""
    import json

    from PIL import Image
    from safetensors.torch import save_file
    from skimage import data

    from dereflect.export.manifest import manifest_path
    from dereflect.images import write_image
    from dereflect.models import create_model, save_checkpoint
    from dereflect.models.reference import reference_student

    d = {k: root / k for k in ("in", "art", "ck")}
    for p in d.values():
        p.mkdir(parents=True)
    src = d["in"]
    photo = np.ascontiguousarray(data.astronaut()[96:144, 200:264])  # 48 x 64
    Image.fromarray(photo).save(src / "good.png")
    Image.fromarray(photo).save(src / "good.jpg", quality=95)
    (src / "empty.png").write_bytes(b"")
    for name in ("png", "jpg"):
        good = (src / f"good.{name}").read_bytes()
        (src / f"truncated.{name}").write_bytes(good[: len(good) // 2])
    header = bytearray((src / "good.png").read_bytes())
    header[16:20] = b"\xff\xff\xff\xff"  # width field no longer matches the IHDR CRC
    (src / "bad-header.png").write_bytes(bytes(header))
    (src / "notes.png").write_text("shopping list\n")
    _png_header_only(src / "zero.png", 0, 0)
    _png_header_only(src / "huge.png", 10240, 10240)
    _png_header_only(src / "bomb.png", 50000, 50000)
    Image.fromarray(photo[:, :, 0].astype(np.float32)).save(src / "float.tif")
    (src / "png-named.jpg").write_bytes((src / "good.png").read_bytes())
    Image.fromarray(photo[:1, :1]).save(src / "one.png")
    write_image(src / "deep.png", photo.astype(np.uint16) * 257 + np.arange(48 * 64 * 3, dtype=np.uint16).reshape(48, 64, 3) % 200)
    Image.fromarray(photo).convert("CMYK").save(src / "cmyk.jpg", quality=95)
    Image.fromarray(photo).convert("P").save(src / "palette.png")
    Image.fromarray(np.dstack([photo, np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))])).save(src / "alpha.png")
    frames = [Image.fromarray(photo), Image.fromarray(np.ascontiguousarray(photo[::-1]))]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(src / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    (src / "mixed").mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(photo).save(src / "mixed" / name)
    (src / "mixed" / "b-truncated.png").write_bytes((src / "truncated.png").read_bytes())
    (src / "empty-dir").mkdir()
    for sub in ("blended", "transmission"):
        (src / "pairs" / sub).mkdir(parents=True)
        Image.fromarray(photo).save(src / "pairs" / sub / "a.png")
    (src / "typo.yaml").write_text("stpes: 3\n")

    student = reference_student("student-nano", seed=1)
    save_checkpoint(student, d["ck"] / "student.safetensors")
    save_checkpoint(create_model("teacher-small"), d["ck"] / "teacher.safetensors")
    whole = (d["ck"] / "student.safetensors").read_bytes()
    (d["ck"] / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    import torch

    save_file({"w": torch.zeros(3)}, str(d["ck"] / "foreign.safetensors"))

    art = d["art"]
    _export_onnx(student, art / "good.onnx")
    _export_onnx(student, art / "rgba-input.onnx", channels=4)
    good, manifest = (art / "good.onnx").read_bytes(), json.loads(manifest_path(art / "good.onnx").read_text())

    def copy(name: str, blob: bytes, text: str | None = None, **changes) -> None:
        (art / name).write_bytes(blob)
        if text is None:
            text = json.dumps({**manifest, "artifact": name, **changes})
        manifest_path(art / name).write_text(text)

    copy("truncated.onnx", good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[-10] ^= 0xFF
    copy("flipped.onnx", bytes(flipped))
    (art / "bare.onnx").write_bytes(good)
    copy("cut-manifest.onnx", good, json.dumps({**manifest, "artifact": "cut-manifest.onnx"})[:100])
    copy("edited.onnx", good, constraints={**manifest["constraints"], "multiple_of": 0})
    return d


# ------------------------------------------------------------------------------------ checks of accepted rows


def _check_wrong_extension(out: Path, src: Path) -> None:
    from PIL import Image

    assert Image.open(out / "png-named.jpg").format == "JPEG"


def _check_one(out: Path, src: Path) -> None:
    from dereflect.images import read_image

    assert read_image(out / "one.png").pixels.shape == (1, 1, 3)


def _check_deep(out: Path, src: Path) -> None:
    from dereflect.images import read_image

    got = read_image(out / "deep.png")
    assert got.bit_depth == 16 and got.pixels.shape == (48, 64, 3)
    assert len(np.unique(got.pixels % 257)) > 10  # real 16-bit values, not 8-bit ones scaled up


def _check_cmyk(out: Path, src: Path) -> None:
    from PIL import Image

    assert Image.open(out / "cmyk.jpg").mode == "RGB"


def _check_palette(out: Path, src: Path) -> None:
    from dereflect.images import read_image

    assert read_image(out / "palette.png").pixels.shape == (48, 64, 3)


def _check_alpha(out: Path, src: Path) -> None:
    from dereflect.images import read_image

    assert np.array_equal(read_image(out / "alpha.png").alpha, read_image(src / "alpha.png").alpha)


def _check_first_frame(name: str, written: str) -> Callable[[Path, Path], None]:
    def check(out: Path, src: Path) -> None:
        from dereflect.images import read_rgb
        from dereflect.runtime import load

        first = read_rgb(src / "good.png")  # frame 0 is the photo, frame 1 its upside-down copy
        session = load("default")
        got = read_rgb(out / written).astype(int)
        # GIF quantises to 256 colours and WebP output is lossy: closer to frame 0's result by far
        d_first = np.abs(got - session.run(first).astype(int)).mean()
        d_second = np.abs(got - session.run(np.ascontiguousarray(first[::-1])).astype(int)).mean()
        assert d_first < 8 and d_first < d_second / 4, (d_first, d_second)

    return check


ACCEPTED_CHECKS: dict[str, Callable[[Path, Path], None]] = {
    "image-wrong-extension": _check_wrong_extension,
    "image-1x1": _check_one,
    "image-16-bit": _check_deep,
    "image-cmyk": _check_cmyk,
    "image-palette": _check_palette,
    "image-alpha": _check_alpha,
    "image-animated-gif": _check_first_frame("anim.gif", "anim.png"),
    "image-animated-webp": _check_first_frame("anim.webp", "anim.webp"),
}


# ------------------------------------------------------------------------------------ running a row


def fill(text: str, names: dict[str, str]) -> str:
    for key, value in names.items():
        text = text.replace("{" + key + "}", value)
    return text


def _pattern(line: str) -> re.Pattern[str]:
    """An expected line with `…` standing for one token (no spaces)."""
    return re.compile(r"\S+?".join(re.escape(part) for part in line.split("…")) + r"\Z")


def _tree_hashes(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


class _Timeout(Exception):
    pass


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    from dereflect.cli import main

    def alarm(*_):
        raise _Timeout(f"no answer in {TIMEOUT_S} s: {argv}")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(TIMEOUT_S)
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _run_subprocess(argv: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "dereflect", *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return build_inputs(tmp_path_factory.mktemp("bad-inputs"))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row: Row, inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    names = {**{k: str(v) for k, v in inputs.items()}, "out": str(out)}
    argv = [fill(a, names) for a in row.argv]
    before = _tree_hashes(*inputs.values())
    code, stdout, stderr = _run_subprocess(argv) if row.subprocess else _run_main(argv, capsys)

    assert "Traceback" not in stdout + stderr, stderr
    said = [line for line in stderr.splitlines() if line.startswith(("error:", "warning:"))]
    expected = [fill(line, {**names, "keys": _CONFIG_KEYS}) for line in row.says]
    assert len(said) == len(expected) and all(_pattern(e).match(s) for e, s in zip(expected, said)), (said, expected)
    assert code == row.exit, (code, stderr)
    assert _tree_hashes(*inputs.values()) == before, "an input file changed"
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
    assert written == sorted(row.outputs), written  # no partial, temp or unexpected files
    stray = [p for folder in inputs.values() for p in folder.rglob(".*.tmp")]
    assert not stray, stray
    if row.id in ACCEPTED_CHECKS:
        ACCEPTED_CHECKS[row.id](out, inputs["in"])


# ------------------------------------------------------------------------------------ the document


def render_doc() -> str:
    """docs/BAD_INPUT.md, from ROWS."""
    lines = [
        "# Bad input: what the user sees",
        "",
        "Every row is run through the real CLI by `tests/test_bad_input_catalogue.py` (the test id is in the last",
        f"column): the exact `error:` / `warning:` lines, the exit status, no traceback, an answer within {TIMEOUT_S} s, every input",
        "file byte-identical afterwards (sha256) and no partial or temp file in the output folder. This file is",
        "generated from the test's `ROWS` (`python tests/test_bad_input_catalogue.py`), and a test fails when they differ.",
        "",
        "Paths: `in/` holds the inputs, `art/` exported ONNX artifacts with their manifests, `ck/` checkpoints,",
        "`out/` the output folder. `…` stands for one run-dependent token (a sha256 prefix, a byte count).",
        "Exit status 1 = bad input or a failed step, 2 = bad usage, 0 = accepted.",
        "",
        f"{len(ROWS)} rows: {sum(r.exit != 0 for r in ROWS)} refused, {sum(r.exit == 0 for r in ROWS)} accepted.",
        "",
        "| # | kind | bad input | command | what the user sees | exit | outcome | test |",
        "|---:|---|---|---|---|---:|---|---|",
    ]
    for i, row in enumerate(ROWS, 1):
        command = "dereflect " + " ".join(fill(a, DOC_NAMES) for a in row.argv)
        says = "<br>".join(f"`{fill(s, DOC_NAMES)}`" for s in row.says) or "(nothing on stderr)"
        outcome = row.outcome + (f"; writes {', '.join(f'`{o}`' for o in row.outputs)}" if row.outputs and row.exit == 0 else "")
        via = " (subprocess)" if row.subprocess else ""
        lines.append(
            f"| {i} | {row.kind} | {row.what} | `{command}` | {says.replace('|', '&#124;')} | {row.exit} | {outcome} "
            f"| `test_row[{row.id}]`{via} |"
        )
    return "\n".join(lines) + "\n"


def test_doc_matches_rows() -> None:
    assert DOC.is_file(), "docs/BAD_INPUT.md missing: run `python tests/test_bad_input_catalogue.py`"
    assert DOC.read_text() == render_doc(), "docs/BAD_INPUT.md is stale: run `python tests/test_bad_input_catalogue.py`"


def test_catalogue_covers_the_asked_kinds() -> None:
    ids = {r.id for r in ROWS}
    assert len(ROWS) >= 20 and len(ids) == len(ROWS)  # ids unique: the doc's test column names exactly one test
    for needed in (
        "image-empty",
        "image-truncated-png",
        "image-corrupt-header",
        "image-wrong-extension",
        "image-1x1",
        "image-100-megapixel",
        "image-decompression-bomb",
        "image-16-bit",
        "image-cmyk",
        "image-palette",
        "image-alpha",
        "image-animated-gif",
        "onnx-truncated",
        "onnx-manifest-missing",
        "onnx-manifest-edited",
        "onnx-sha256-mismatch",
        "onnx-wrong-input-shape",
        "ckpt-teacher-for-remove",
        "out-unwritable",
        "out-equals-input",
        "export-unknown-format",
        "export-unknown-precision",
    ):
        assert needed in ids, needed
    assert set(ACCEPTED_CHECKS) == {r.id for r in ROWS if r.exit == 0}  # every accepted row checks what happened


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_doc())
    print(f"wrote {DOC.relative_to(REPO)} ({len(ROWS)} rows)")
