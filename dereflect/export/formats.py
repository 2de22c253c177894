"""THE format table: one row per export target, read by option validation, export dispatch,
`--format all`, the runtime (which file is which format, which backends run it) and the
benchmark loop (Ultralytics' exporter and its AutoBackend share one table the same way).

A row says what a format is (the suffix export writes and the file names it recognises, the
backends that run it, the pip extra that brings its tools, the precisions it takes) and what it
needs beyond that (a CUDA GPU, macOS). Whether *this* machine can build or run it is asked
separately (`format_status`), because the answer depends on what is installed and on the
platform, and is cached so asking is cheap. Other modules import `FORMATS` (a list, in build
order), `FORMATS_BY_NAME`, or `format_for_path` (checkpoints included, as the `CHECKPOINT` row).

A new format is one row here, its builder (`Exporter._build_<name>` in pipeline.py) and, when no
existing backend runs it, one backend module (dereflect/runtime/backends/).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from dereflect.errors import UsageError, first_line

#: Every precision, in the order tables and rankings use (most exact first).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ExportFormat:
    """One export target. `suffix` is appended to `<name>-<precision>`; `is_dir` says the artifact
    is a folder (hashed file by file in the manifest)."""

    name: str
    title: str
    suffix: str
    runtime: str  # what runs the artifact
    extra: str | None  # `pip install 'dereflect[<extra>]'` brings the tools; None: core dependencies
    modules: tuple[str, ...]  # Python modules the build needs
    needs: str | None  # "cuda" or "macos": what building or running needs beyond the modules
    precisions: tuple[str, ...]
    is_dir: bool = False
    description: str = ""
    backends: tuple[str, ...] = ()  # runtime backends that run it; the first is what `--backend auto` uses
    suffixes: tuple[str, ...] = ()  # file names recognised as this format (lower case); () means `suffix`
    folder_glob: str | None = None  # a folder holding exactly one such file is this format (an IR folder)
    via_onnx: bool = False  # built from the ONNX export (int8 shares one calibration)
    fixed_shapes: bool = False  # takes `--fixed-shape HxW`: input fixed to (1,3,H,W), one artifact per shape (phone NPUs)

    def artifact_name(self, stem: str, precision: str) -> str:
        return f"{stem}-{precision}{self.suffix}"

    def install_hint(self) -> str:
        return f"pip install 'dereflect[{self.extra}]'" if self.extra else "pip install dereflect"

    def matches(self, path: Path) -> bool:
        """Is this file or folder, by its name (or the one file in it), of this format?"""
        if path.name.lower().endswith(self.suffixes or (self.suffix,)):
            return True
        return self.folder_glob is not None and path.is_dir() and len(list(path.glob(self.folder_glob))) == 1


FORMATS: list[ExportFormat] = [
    ExportFormat(
        "onnx",
        "ONNX",
        ".onnx",
        "onnxruntime",
        "export",  # building needs torch + the ONNX tools; running needs only onnxruntime (core)
        ("onnx", "onnxruntime", "onnxslim", "onnxconverter_common"),
        None,
        PRECISIONS,
        backends=("onnxruntime", "openvino"),
        via_onnx=True,
        fixed_shapes=True,
        description="dynamic N/H/W (or --fixed-shape 1x3xHxW), one file; fp16 keeps float32 IO; int8 = static QDQ (u8 activations, s8 per-channel weights)",
    ),
    ExportFormat(
        "ort",
        "ONNX Runtime (mobile + web)",
        ".ort",
        "onnxruntime",
        "export",
        ("onnx", "onnxruntime"),
        None,
        PRECISIONS,
        backends=("onnxruntime",),
        via_onnx=True,
        fixed_shapes=True,
        description="ORT format for onnxruntime-mobile (Fixed optimisations for ARM; Runtime ones with --fixed-shape, for NNAPI/Core ML), plus a .web.onnx for onnxruntime-web",
    ),
    ExportFormat(
        "openvino",
        "OpenVINO IR",
        "_openvino",
        "openvino",
        "openvino",
        ("openvino", "nncf"),
        None,
        PRECISIONS,
        is_dir=True,
        backends=("openvino",),
        suffixes=(".xml",),
        folder_glob="*.xml",
        via_onnx=True,
        description="IR xml+bin; fp16 = weights compressed to fp16; int8 = NNCF post-training quantization",
    ),
    ExportFormat(
        "coreml",
        "Core ML",
        ".mlpackage",
        "coreml",
        "coreml",
        ("coremltools",),
        "macos",
        PRECISIONS,
        is_dir=True,
        backends=("coreml",),
        suffixes=(".mlpackage", ".mlmodel"),
        fixed_shapes=True,
        description="ML program, float32 IO, flexible H/W (or --fixed-shape: fixed, or enumerated with --coreml-shapes enumerated); fp16 compute (fp32 for --precision fp32); int8 = weights only",
    ),
    ExportFormat(
        "tensorrt",
        "TensorRT engine",
        ".engine",
        "tensorrt",
        "tensorrt",
        ("tensorrt",),
        "cuda",
        PRECISIONS,
        backends=("tensorrt",),
        suffixes=(".engine", ".plan"),
        via_onnx=True,
        description="built from the ONNX (int8 from a symmetric s8 QDQ graph) with an optimisation profile and a timing cache",
    ),
    ExportFormat(
        "pte",
        "ExecuTorch (XNNPACK)",
        ".pte",
        "executorch",
        "mobile",
        ("executorch",),
        None,
        ("fp32", "int8"),
        backends=("executorch",),
        fixed_shapes=True,
        description="torch.export lowered to the XNNPACK delegate (one partition), fixed 1x3xHxW (--size, or --fixed-shape); int8 = PT2E XNNPACKQuantizer (s8 per-channel weights, s8 activations)",
    ),
    ExportFormat(
        "tflite",
        "LiteRT (TFLite)",
        ".tflite",
        "litert",
        "mobile",
        ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
        None,
        ("fp32", "int8"),
        backends=("litert",),
        fixed_shapes=True,
        description="litert-torch, NHWC IO, fixed 1xHxWx3 (--size, or --fixed-shape); int8 = dynamic range (int8 weights; PT2E int8 does not convert: tfl.pad same-scale constraint; full-integer loses 6-10 dB)",
    ),
]
FORMATS_BY_NAME: dict[str, ExportFormat] = {f.name: f for f in FORMATS}

#: What training writes and export reads: not an export target, but a model `--model` accepts.
CHECKPOINT = ExportFormat(
    "checkpoint",
    "PyTorch checkpoint",
    ".safetensors",
    "torch",
    None,
    ("torch",),
    None,
    ("fp32",),
    backends=("torch",),
    description="safetensors weights + JSON, as training writes them",
)


def format_for_path(path: Path) -> ExportFormat | None:
    """The row (CHECKPOINT included) whose file names `path` has; None when it is no model file."""
    return next((f for f in (CHECKPOINT, *FORMATS) if f.matches(path)), None)


def runnable_by(name: str) -> tuple[str, ...]:
    """The backends that run the format (or "checkpoint") called `name`; () when unknown."""
    fmt = CHECKPOINT if name == CHECKPOINT.name else FORMATS_BY_NAME.get(name)
    return fmt.backends if fmt is not None else ()


#: Every backend a row names, in table order (torch, for checkpoints, first): what `--backend` takes.
BACKEND_NAMES: tuple[str, ...] = tuple(dict.fromkeys(b for f in (CHECKPOINT, *FORMATS) for b in f.backends))


@dataclass(frozen=True)
class FormatStatus:
    """Can this machine build the format, and run what it built (for the parity gate)?"""

    can_build: bool
    can_run: bool
    build_reason: str = ""  # why not, for a person
    run_reason: str = ""


def _module_problem(fmt: ExportFormat) -> str | None:
    for module in fmt.modules:
        if fmt.name == "tensorrt":
            # PyPI's tensorrt can install as a stub whose import fails: only a real import tells.
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
                return f"`import {module}` failed ({first_line(exc, limit=10_000)}): {fmt.install_hint()} (needs NVIDIA's package index and a CUDA GPU)"
        elif importlib.util.find_spec(module) is None:
            return f"Python module '{module}' is not installed: {fmt.install_hint()}"
    return None


def _cuda_problem() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return None
    except Exception:  # noqa: BLE001
        pass
    return "no CUDA GPU on this machine"


@cache
def format_status(name: str) -> FormatStatus:
    """Ask the machine (once per process) whether `name` can be built and run here."""
    fmt = get_format(name)
    problem = _module_problem(fmt)
    if problem is None and fmt.needs == "cuda":
        problem = _cuda_problem()
    if problem is not None:
        return FormatStatus(False, False, problem, problem)
    if fmt.needs == "macos" and sys.platform != "darwin":
        return FormatStatus(True, False, "", "Core ML predicts only on macOS (numerical parity needs macOS)")
    return FormatStatus(True, True)


def get_format(name: str) -> ExportFormat:
    try:
        return FORMATS_BY_NAME[name]
    except KeyError:
        raise UsageError(None, f"unknown format '{name}'; choose one of {', '.join(FORMATS_BY_NAME)} or all") from None


#: Why a row is left out of a `--fixed-shape` export.
_NO_FIXED = (
    "{title} takes no --fixed-shape (rows that do: "
    + ", ".join(f.name for f in FORMATS if f.fixed_shapes)
    + "); export it without --fixed-shape"
)


def resolve_formats(format: str, precision: str, fixed: bool = False) -> tuple[list[ExportFormat], list[tuple[ExportFormat, str]]]:
    """Validate `--format`/`--precision` up front: returns (formats to build, [(skipped, reason)]).

    A named format that cannot be built here is refused (UsageError, exit 2) with the reason and
    the pip extra; `all` builds what it can and lists the rest as skipped. fixed: `--fixed-shape`
    was given, so only rows with `fixed_shapes` qualify.
    """
    if precision not in PRECISIONS:
        raise UsageError(None, f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    names = [f.strip().lower() for f in format.split(",") if f.strip()]
    if not names:
        raise UsageError(None, "--format is empty")
    if "all" in names:
        if len(names) > 1:
            raise UsageError(None, "--format all cannot be combined with other formats")
        build, skipped = [], []
        for fmt in FORMATS:
            status = format_status(fmt.name)
            if precision not in fmt.precisions:
                skipped.append((fmt, f"{fmt.title} does not support {precision} (allowed: {', '.join(fmt.precisions)})"))
            elif fixed and not fmt.fixed_shapes:
                skipped.append((fmt, _NO_FIXED.format(title=fmt.title)))
            elif not status.can_build:
                skipped.append((fmt, status.build_reason))
            else:
                build.append(fmt)
        return build, skipped
    build = []
    for name in dict.fromkeys(names):
        fmt = get_format(name)
        if precision not in fmt.precisions:
            raise UsageError(None, f"{fmt.title} does not support {precision}; allowed: {', '.join(fmt.precisions)}")
        if fixed and not fmt.fixed_shapes:
            raise UsageError(None, _NO_FIXED.format(title=fmt.title))
        status = format_status(fmt.name)
        if not status.can_build:
            raise UsageError(None, f"{fmt.title} cannot be built on this machine: {status.build_reason}")
        build.append(fmt)
    return build, []


def table_rows() -> list[dict[str, object]]:
    """The table as plain dicts (for `--list-formats`, the benchmark and the README)."""
    rows = []
    for fmt in FORMATS:
        status = format_status(fmt.name)
        rows.append(
            {
                "name": fmt.name,
                "title": fmt.title,
                "suffix": fmt.suffix,
                "runtime": fmt.runtime,
                "extra": fmt.extra,
                "needs": fmt.needs,
                "precisions": list(fmt.precisions),
                "fixed_shapes": fmt.fixed_shapes,
                "can_build": status.can_build,
                "can_run": status.can_run,
                "reason": status.build_reason or status.run_reason,
            }
        )
    return rows
