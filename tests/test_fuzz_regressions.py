"""Every input the fuzzers found that broke a contract, kept as a test so the bug stays fixed.

fuzz/findings/*.bin are the (tiny) inputs fuzz/fuzz_decode.py (atheris, coverage-guided) saved,
named after the exception and the Pillow line that raised it before dereflect.images guarded it:
read_image let IndexError / TypeError / struct.error escape from a GIF's or TIFF's frame table
(`n_frames`), and SyntaxError from a broken EXIF block. Each must now be one DereflectError naming
the file (or, for broken EXIF in an image whose pixels decode, the image with a warning).
The cases at the bottom were found by the hypothesis properties in tests/test_properties.py.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from dereflect import metrics
from dereflect.errors import DereflectError
from dereflect.export.manifest import read_manifest
from dereflect.images import read_image
from dereflect.runtime.backends import Backend
from dereflect.runtime.session import Session

FINDINGS = Path(__file__).resolve().parents[1] / "fuzz" / "findings"

#: finding -> what read_image must do now: ("error", words in the message) or ("image", words in the warning)
EXPECTED = {
    "IndexError-GifImagePlugin-232.bin": ("error", "unreadable frame table (IndexError"),
    "IndexError-GifImagePlugin-238.bin": ("error", "unreadable frame table (IndexError"),
    "IndexError-GifImagePlugin-288.bin": ("error", "unreadable frame table (IndexError"),
    "IndexError-GifImagePlugin-301.bin": ("error", "unreadable frame table (IndexError"),
    "TypeError-TiffImagePlugin-1504.bin": ("error", "unreadable frame table (TypeError: Missing dimensions)"),
    "error-_binary-40.bin": ("error", "unreadable frame table (error: unpack_from requires"),
    "SyntaxError-TiffImagePlugin-611.bin": ("image", "unreadable EXIF metadata ignored (SyntaxError"),
}


def test_every_finding_has_an_expectation() -> None:
    """A new file in fuzz/findings/ must be added to EXPECTED (and so get a test)."""
    assert sorted(p.name for p in FINDINGS.glob("*.bin")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_finding_is_handled(name: str, tmp_path: Path) -> None:
    kind, words = EXPECTED[name]
    path = tmp_path / name
    path.write_bytes((FINDINGS / name).read_bytes())
    if kind == "error":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow may also warn (e.g. "Corrupt EXIF data") first
            with pytest.raises(DereflectError) as info:
                read_image(path)
        assert info.value.path == str(path) and words in info.value.problem, info.value.problem
        return
    with pytest.warns(UserWarning, match=words.replace("(", r"\(")):
        img = read_image(path)
    assert img.pixels.ndim == 3 and img.exif is None
    np.testing.assert_array_equal(Session(_Identity(), None, tile=16, overlap=8).run(img.pixels), img.pixels)


class _Identity(Backend):
    name = "identity"

    def __init__(self) -> None:
        pass

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return batch


# ------------------------------------------------------------------ found by hypothesis
def test_lmse_of_identical_images_is_not_negative() -> None:
    """gg - 2a ge + a^2 ee cancelled to -1.3e-16 for a flat image against itself."""
    flat = np.full((20, 20, 3), 5, np.uint8)
    assert metrics.lmse(flat, flat) == 0.0


def test_ssim_of_identical_flat_images_is_not_above_one() -> None:
    """The SSIM map's last float operations gave 1.0000000000000002 for flat 30s."""
    flat = np.full((20, 20, 3), 30, np.uint8)
    assert metrics.ssim(flat, flat) == 1.0


@pytest.mark.parametrize("text", ["[" * 100_000, "1" * 5000])
def test_manifest_parser_survives_deep_nesting_and_huge_numbers(tmp_path: Path, text: str) -> None:
    """RecursionError and int-conversion ValueError escaped json.loads' JSONDecodeError handler."""
    path = tmp_path / "m.onnx.json"
    path.write_text(text)
    with pytest.raises(DereflectError, match="corrupt manifest: not valid JSON"):
        read_manifest(path)


def test_manifest_with_bool_multiple_is_refused(tmp_path: Path) -> None:
    """`"multiple_of": true` passed isinstance(int) and planned tiles on multiples of 1."""
    from dereflect.export.manifest import SCHEMA, io_spec, validate_manifest

    data = {
        "schema": SCHEMA,
        "format": "onnx",
        "precision": "fp32",
        "runtime": "onnxruntime",
        "artifact": "m.onnx",
        "artifact_sha256": "0" * 64,
        **io_spec(),
        "source": {},
        "tools": {},
        "parity": {"status": "passed"},
    }
    validate_manifest(json.loads(json.dumps(data)))
    data["constraints"]["multiple_of"] = True
    with pytest.raises(DereflectError, match="multiple_of"):
        validate_manifest(data, "m.json")
