"""`dereflect export`: options -> format table validation -> Exporter -> table, report, exit status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dereflect.errors import DereflectError, os_reason

#: The parity budget's options, shared by `dereflect export` and `dereflect bench` (defaults: export/parity.py).
MAX_DIFF = typer.Option(None, "--max-diff", help="Parity budget: max |diff| vs PyTorch (default 1e-4 for fp32).")
MAX_SSIM_DROP = typer.Option(None, "--max-ssim-drop", help="Parity budget: SSIM drop vs PyTorch (default fp16 0.002, int8 0.01).")
MAX_LMSE_RISE = typer.Option(None, "--max-lmse-rise", help="Parity budget: LMSE rise vs PyTorch (default: not checked).")


def export_command(
    checkpoint: Optional[Path] = typer.Argument(
        None, help="Checkpoint (.safetensors) of a student or a burst model, or a shipped model's name (student-nano, burst-base)."
    ),
    model: Optional[str] = typer.Option(None, "--model", help="The same as CHECKPOINT: a shipped model's name or a checkpoint path."),
    format: str = typer.Option("onnx", "--format", help="onnx, ort, openvino, coreml, tensorrt, pte, tflite (comma-separated) or all."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="INT8 calibration images (default: synthesised middle frames)."),
    out: Path = typer.Option(..., "--out", help="Folder for artifacts and manifests."),
    size: int = typer.Option(
        256, "--size", "--calib-size", help="Export resolution (px, multiple of 8) for calibration and parity images."
    ),
    calib_count: int = typer.Option(16, "--calib-count", help="Calibration images used (at least 4)."),
    pairs: Optional[Path] = typer.Option(
        None, "--pairs", help="Paired set (blended/ + transmission/) for the parity gate (default: synthesised pairs)."
    ),
    val_count: int = typer.Option(8, "--val-count", help="Validation images for the parity gate."),
    int8_exclude: list[str] = typer.Option(
        [], "--int8-exclude", help="Layers kept in float (module path like decoder.head, or node name); repeat or comma-separate."
    ),
    int8_recover: bool = typer.Option(
        True,
        "--int8-recover/--no-int8-recover",
        help="When an INT8 build misses its SSIM budget, rebuild it: ONNX Runtime keeps the few layers that measurably cost the most "
        "in float (and tries Percentile calibration), OpenVINO uses NNCF's accuracy-aware quantization; the manifest says what stayed float.",
    ),
    max_diff: Optional[float] = MAX_DIFF,
    max_ssim_drop: Optional[float] = MAX_SSIM_DROP,
    max_lmse_rise: Optional[float] = MAX_LMSE_RISE,
    opset: int = typer.Option(20, "--opset", help="ONNX opset."),
    coreml_shapes: str = typer.Option(
        "range",
        "--coreml-shapes",
        help="Core ML flexible H/W: range (8..4096) or enumerated (fixed sizes, Neural Engine friendly; with --fixed-shape: those sizes in one package).",
    ),
    fixed_shape: list[str] = typer.Option(
        [],
        "--fixed-shape",
        help="Fixed input HxW (batch 1) for phone NPUs (NNAPI, Core ML): one artifact per shape, e.g. "
        "--fixed-shape 512x512 (tile) --fixed-shape 384x512 (preview), or comma-separated; multiples of the model's H/W multiple. "
        "Formats onnx, ort, coreml; default: dynamic H/W.",
    ),
    palettize: Optional[int] = typer.Option(
        None, "--palettize", help="Core ML: palettize weights to N bits (k-means) instead of linear INT8."
    ),
    trt_min: str = typer.Option("1x3x64x64", "--trt-min", help="TensorRT profile: smallest input."),
    trt_opt: str = typer.Option("1x3x512x512", "--trt-opt", help="TensorRT profile: the shape to tune for."),
    trt_max: str = typer.Option("1x3x2048x2048", "--trt-max", help="TensorRT profile: largest input."),
    name: Optional[str] = typer.Option(None, "--name", help="Artifact file stem (default: the model name, e.g. student-nano)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthesised calibration/validation images."),
    list_formats: bool = typer.Option(False, "--list-formats", help="Print the format table (what this machine can build/run) and exit."),
) -> None:
    """Convert a student checkpoint for a runtime, quantize it, and check parity against PyTorch.

    Every artifact gets a manifest (`<artifact>.json`) with its IO contract, sha256 and the parity
    measured here; `--format all` builds what this machine can and lists what it skipped.
    Exit 0 only when everything built passed its parity budget.

    Example: dereflect export runs/student/best.safetensors --format all --precision int8 --out artifacts/

    Burst model (5 frames in): dereflect export --model burst-base --format onnx,openvino --out artifacts/burst/
    """
    from rich.console import Console
    from rich.markup import escape

    from dereflect.export.formats import resolve_formats, table_rows
    from dereflect.export.pipeline import Exporter, ExportOptions, check_options

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)  # logs and CI: no wrapping into 80 columns
    if list_formats:
        _print_formats(console, table_rows())
        return
    from dereflect.export.onnx import parse_hw

    fixed = tuple(dict.fromkeys(parse_hw(s) for item in fixed_shape for s in item.split(",") if s.strip()))
    formats, skipped = resolve_formats(format, precision, fixed=bool(fixed))
    budget = dict(max_abs_diff=max_diff, max_ssim_drop=max_ssim_drop, max_lmse_rise=max_lmse_rise)
    targets = dict(
        opset=opset, coreml_shapes=coreml_shapes, palettize=palettize, trt_shapes=(trt_min, trt_opt, trt_max), fixed_shapes=fixed
    )
    int8 = tuple(p for item in int8_exclude for p in item.split(",") if p.strip())
    data = dict(
        calib=calib, calib_count=calib_count, size=size, pairs=pairs, val_count=val_count, int8_exclude=int8, int8_recover=int8_recover
    )
    opts = ExportOptions(precision=precision, name=name, seed=seed, **data, **budget, **targets)
    check_options(formats, opts)
    if out.exists() and not out.is_dir():
        raise DereflectError(out, "--out must be a folder, and this is a file")
    for fmt, reason in skipped:
        console.print(f"skip {fmt.name}: {reason}", markup=False)
    checkpoint = _checkpoint(checkpoint, model)
    exporter = Exporter(checkpoint, out, opts, log=lambda line: console.print(line, markup=False))
    results = exporter.run(formats)
    _print_results(console, results, skipped)
    _write_report(Path(out), checkpoint, precision, results, skipped)
    bad = [r for r in results if not r.ok]
    if bad:
        lines = []
        for r in bad:
            why = r.message if r.status == "error" else "; ".join((r.parity or {}).get("failures", []))
            lines.append(f"{r.format} {r.precision} {r.status}: {why}")
            for fix in (r.parity or {}).get("fixes", []) if r.status == "failed" else []:
                console.print(f"  fix ({r.format}): {escape(fix)}")
        raise DereflectError(out, "export did not pass: " + " | ".join(lines) + " (artifacts and manifests kept)")


def _checkpoint(checkpoint: Path | None, model: str | None) -> Path:
    """CHECKPOINT or --model (one of them): a path, or the name of a model shipped in dereflect/weights."""
    from dereflect.errors import UsageError
    from dereflect.models import shipped_weights

    if (checkpoint is None) == (model is None):
        raise UsageError(None, "give the model to export once: a CHECKPOINT argument or --model NAME (e.g. --model burst-base)")
    text = str(checkpoint if checkpoint is not None else model)
    if Path(text).expanduser().exists():
        return Path(text).expanduser()
    return shipped_weights(text) or Path(text)  # a missing path is reported by name when it is loaded


def _print_formats(console, rows) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="export formats")
    for col in ("name", "suffix", "runtime", "extra", "precisions", "build here", "run here", "why not"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["suffix"],
            r["runtime"],
            r["extra"] or "-",
            ",".join(r["precisions"]),
            "yes" if r["can_build"] else "no",
            "yes" if r["can_run"] else "no",
            escape(r["reason"] or ""),
        )
    console.print(table)


def _print_results(console, results, skipped) -> None:
    from rich.markup import escape
    from rich.table import Table

    from dereflect.export.parity import summary

    table = Table(title="dereflect export")
    for col in ("format", "precision", "artifact", "size", "build s", "parity s", "result"):
        table.add_column(col)
    for r in results:
        result = r.message if r.status == "error" else (summary(r.parity) if r.parity else r.status)
        style = {"passed": "green", "failed": "red", "error": "red"}.get(r.status, "yellow")
        table.add_row(
            f"{r.format} {r.shape}" if r.shape else r.format,
            r.precision,
            r.artifact.name if r.artifact else "-",
            f"{r.size_bytes / 1024:.0f} KiB" if r.size_bytes else "-",
            f"{r.build_s:.1f}",
            f"{r.parity_s:.1f}",
            f"[{style}]{escape(result)}[/{style}]",
        )
    for fmt, reason in skipped:
        table.add_row(fmt.name, "-", "-", "-", "-", "-", f"[yellow]skipped: {escape(reason)}[/yellow]")
    console.print(table)


def _write_report(out: Path, checkpoint: Path, precision: str, results, skipped) -> None:
    """export-report.json: the run at a glance (not a manifest; `find_artifacts` ignores it)."""
    from dereflect.files import write_bytes_atomic

    report = {
        "kind": "dereflect-export-report",
        "checkpoint": str(checkpoint),
        "precision": precision,
        "results": [r.as_dict() for r in results],
        "skipped": [{"format": f.name, "reason": reason} for f, reason in skipped],
    }
    path = out / f"export-report-{precision}.json"
    try:
        write_bytes_atomic(path, (json.dumps(report, indent=2, default=str) + "\n").encode())
    except OSError as exc:
        raise DereflectError(path, f"could not write the export report ({os_reason(exc)})") from None
