"""Generic fixtures: the shared real data (skipped when absent) and a bundled photo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

#: ../shared/data beside the repository (override with DEREFLECT_SHARED_DATA).
SHARED_DATA = Path(os.environ.get("DEREFLECT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of public development images; tests that need it skip on a fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """scikit-image's bundled astronaut photo: 512x512x3 uint8 RGB, read-only (copy to modify)."""
    from skimage import data

    img = np.ascontiguousarray(data.astronaut())
    assert img.dtype == np.uint8 and img.shape == (512, 512, 3)
    img.setflags(write=False)
    return img


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process: (exit status, stdout, stderr)."""
    from dereflect.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def student():
    """student-nano with seeded, realistic (non-identity) weights: what export/runtime tests convert."""
    from dereflect.models.reference import reference_student

    return reference_student("student-nano", seed=0)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory, student):
    """That student as a checkpoint (step 7 recorded, so manifests can be checked for it)."""
    from dereflect.models import save_checkpoint

    return save_checkpoint(student, tmp_path_factory.mktemp("ckpt") / "nano.safetensors", step=7)
