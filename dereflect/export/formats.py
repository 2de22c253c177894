"""THE format table: one row per export target, read by option validation, export dispatch,
`--format all` and the benchmark loop (Ultralytics' exporter works the same way).

A row says what a format is (suffix, runtime, the pip extra that brings its tools, the
precisions it takes) and what it needs beyond that (a CUDA GPU, macOS). Whether *this* machine
can build or run it is asked separately (`format_status`), because the answer depends on what is
installed and on the platform, and is cached so asking is cheap. Other modules import `FORMATS`
(a list, in build order) or `FORMATS_BY_NAME`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from functools import lru_cache

from dereflect.errors import UsageError

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

    def artifact_name(self, stem: str, precision: str) -> str:
        return f"{stem}-{precision}{self.suffix}"

    def install_hint(self) -> str:
        return f"pip install 'dereflect[{self.extra}]'" if self.extra else "pip install dereflect"


FORMATS: list[ExportFormat] = [
    ExportFormat(
        "onnx", "ONNX", ".onnx", "onnxruntime", None, ("onnx", "onnxruntime", "onnxslim", "onnxconverter_common"),
        None, PRECISIONS,
        description="dynamic N/H/W, one file; fp16 keeps float32 IO; int8 = static QDQ (u8 activations, s8 per-channel weights)",
    ),
    ExportFormat(
        "ort", "ONNX Runtime (mobile + web)", ".ort", "onnxruntime", None, ("onnx", "onnxruntime"), None, PRECISIONS,
        description="ORT format for onnxruntime-mobile (Fixed optimisations for ARM), plus a .web.onnx for onnxruntime-web",
    ),
    ExportFormat(
        "openvino", "OpenVINO IR", "_openvino", "openvino", "openvino", ("openvino", "nncf"), None, PRECISIONS, is_dir=True,
        description="IR xml+bin; fp16 = weights compressed to fp16; int8 = NNCF post-training quantization",
    ),
    ExportFormat(
        "coreml", "Core ML", ".mlpackage", "coreml", "coreml", ("coremltools",), "macos", PRECISIONS, is_dir=True,
        description="ML program, float32 IO, flexible H/W; fp16 compute (fp32 for --precision fp32); int8 = weights only",
    ),
    ExportFormat(
        "tensorrt", "TensorRT engine", ".engine", "tensorrt", "tensorrt", ("tensorrt",), "cuda", PRECISIONS,
        description="built from the ONNX (int8 from a symmetric s8 QDQ graph) with an optimisation profile and a timing cache",
    ),
]
FORMATS_BY_NAME: dict[str, ExportFormat] = {f.name: f for f in FORMATS}


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
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return f"`import {module}` failed ({first}): {fmt.install_hint()} (needs NVIDIA's package index and a CUDA GPU)"
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


@lru_cache(maxsize=None)
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


def resolve_formats(format: str, precision: str) -> tuple[list[ExportFormat], list[tuple[ExportFormat, str]]]:
    """Validate `--format`/`--precision` up front: returns (formats to build, [(skipped, reason)]).

    A named format that cannot be built here is refused (UsageError, exit 2) with the reason and
    the pip extra; `all` builds what it can and lists the rest as skipped.
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
        rows.append({
            "name": fmt.name, "title": fmt.title, "suffix": fmt.suffix, "runtime": fmt.runtime,
            "extra": fmt.extra, "needs": fmt.needs, "precisions": list(fmt.precisions),
            "can_build": status.can_build, "can_run": status.can_run,
            "reason": status.build_reason or status.run_reason,
        })
    return rows
