"""A checkpoint -> every format this machine builds, at every precision (`--format all` x3).

`dereflect bench CKPT` and `dereflect demo run` use it. The student is loaded once and the fp32
ONNX graph exported once; each precision's Exporter starts from that graph (the export stage's
own `base_onnx` hook), so three precisions cost one ONNX export.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from dereflect.export.formats import PRECISIONS


def export_all(checkpoint: Path, out: Path, precisions: tuple[str, ...] = PRECISIONS, formats: str = "all",
               log: Callable[[str], None] = print, size: int = 256, val_count: int = 8, calib_count: int = 16):
    """Export `checkpoint` to `formats` at each precision into `out`; the ExportResults (a failed
    parity gate or build is in its result, not raised: the benchmark reports it)."""
    from dereflect.export.formats import resolve_formats
    from dereflect.export.pipeline import ExportOptions, Exporter
    from dereflect.models import load_checkpoint

    model = load_checkpoint(checkpoint, expect="student")
    results = []
    with tempfile.TemporaryDirectory(prefix="dereflect-bench-export-") as tmp:
        base: Path | None = None
        for precision in precisions:
            build, skipped = resolve_formats(formats, precision)
            for fmt, reason in skipped:
                log(f"skip {fmt.name} {precision}: {reason}")
            opts = ExportOptions(precision=precision, size=size, val_count=val_count, calib_count=calib_count)
            exporter = Exporter(checkpoint, out, opts, log=log, model=model, base_onnx=base)
            if base is None and any(f.via_onnx for f in build):
                base = Path(shutil.copyfile(exporter.onnx_path("fp32"), Path(tmp) / "base-fp32.onnx"))
            results += exporter.run(build)
    return results
