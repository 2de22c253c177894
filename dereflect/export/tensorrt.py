"""ONNX -> TensorRT engine, through the TensorRT Python API.

Everything before the builder is plain data and runs anywhere: the optimisation profile
(min/opt/max input shapes, H and W multiples of 8), the builder flags per precision, the ONNX
the engine is parsed from (fp32 ONNX for fp32/fp16; for int8 an explicit-quantization graph:
symmetric s8 QDQ, which is what TensorRT's INT8 takes — its u8/asymmetric sibling for ORT is
not), and a Polygraphy lint of that ONNX. `build_engine` then needs `tensorrt` and a CUDA GPU;
without them it stops with one clear DereflectError (`formats.format_status` says the same up
front, so `--format all` lists TensorRT as skipped with that reason).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dereflect.errors import DereflectError, UsageError, first_line
from dereflect.runtime.backends.base import COLOUR_INPUT

DEFAULT_MIN = (1, 3, 64, 64)
DEFAULT_OPT = (1, 3, 512, 512)
DEFAULT_MAX = (1, 3, 2048, 2048)
WORKSPACE_BYTES = 2 << 30


def parse_shape(text: str, multiple: int = 8) -> tuple[int, int, int, int]:
    """`1x3x512x512` (or `512x512`, `512`) -> (N,3,H,W), H and W multiples of `multiple`."""
    parts = [p for p in text.lower().replace(",", "x").split("x") if p]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise UsageError(None, f"bad shape '{text}': use NxCxHxW like 1x3x512x512") from None
    if len(nums) == 1:
        nums = [1, 3, nums[0], nums[0]]
    elif len(nums) == 2:
        nums = [1, 3, *nums]
    if len(nums) != 4 or nums[1] != 3 or min(nums) < 1:
        raise UsageError(None, f"bad shape '{text}': need N x 3 x H x W with positive sizes")
    if nums[2] % multiple or nums[3] % multiple:
        raise UsageError(None, f"bad shape '{text}': H and W must be multiples of {multiple}")
    return (nums[0], nums[1], nums[2], nums[3])


@dataclass
class EnginePlan:
    """Everything the builder is told, as data (recorded in the manifest, checked in tests)."""

    onnx: str
    precision: str
    input_name: str = "input"
    min_shape: tuple[int, int, int, int] = DEFAULT_MIN
    opt_shape: tuple[int, int, int, int] = DEFAULT_OPT
    max_shape: tuple[int, int, int, int] = DEFAULT_MAX
    flags: list[str] = field(default_factory=list)
    workspace_bytes: int = WORKSPACE_BYTES
    timing_cache: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def builder_flags(precision: str) -> list[str]:
    """tensorrt.BuilderFlag names per precision. int8 parses a QDQ graph (explicit quantization):
    INT8 enables those layers, FP16 lets the rest run in half precision instead of fp32."""
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}
    if precision not in flags:
        raise UsageError(None, f"TensorRT precision must be one of {', '.join(flags)}, got '{precision}'")
    return flags[precision]


def make_plan(
    onnx_path: str | Path,
    precision: str,
    min_shape=DEFAULT_MIN,
    opt_shape=DEFAULT_OPT,
    max_shape=DEFAULT_MAX,
    timing_cache: str | Path | None = None,
) -> EnginePlan:
    """Validate the profile (min <= opt <= max per axis) and assemble the plan."""
    for axis in range(4):
        if not min_shape[axis] <= opt_shape[axis] <= max_shape[axis]:
            raise UsageError(None, f"TensorRT profile needs min <= opt <= max on every axis: {min_shape} / {opt_shape} / {max_shape}")
    onnx_path = Path(onnx_path)
    cache = Path(timing_cache) if timing_cache else onnx_path.with_name("tensorrt.timing.cache")
    return EnginePlan(
        str(onnx_path),
        precision,
        min_shape=tuple(min_shape),
        opt_shape=tuple(opt_shape),
        max_shape=tuple(max_shape),
        flags=builder_flags(precision),
        timing_cache=str(cache),
    )


def _polygraphy() -> list[str]:
    """The `polygraphy` command of this environment (its package has no __main__)."""
    script = Path(sys.executable).with_name("polygraphy")
    found = str(script) if script.is_file() else shutil.which("polygraphy")
    if found is None:
        raise DereflectError(None, "polygraphy is not installed: pip install 'dereflect[dev]' (or polygraphy onnx-graphsurgeon)")
    return [sys.executable, found]


def lint_onnx(onnx_path: str | Path, shape: tuple[int, int, int, int] = (1, 3, 64, 64)) -> dict[str, object]:
    """`polygraphy check lint` on the ONNX the engine would be built from; returns its JSON report.
    DereflectError when the lint fails (it names the failing nodes)."""
    with tempfile.TemporaryDirectory(prefix="dereflect-lint-") as tmp:
        report = Path(tmp) / "lint.json"
        cmd = [*_polygraphy(), "check", "lint", str(onnx_path), "-o", str(report), "--input-shapes", f"input:[{','.join(map(str, shape))}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if not report.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise DereflectError(onnx_path, f"polygraphy lint did not run: {' | '.join(tail)}")
        data = json.loads(report.read_text())
    failing = data.get("summary", {}).get("failing", [])
    if proc.returncode != 0 or failing:
        entries = [e.get("message", "") for e in data.get("lint_entries", [])][:3]
        raise DereflectError(onnx_path, f"polygraphy lint failed on {failing[:5]}: {entries}")
    return data


def build_engine(plan: EnginePlan, engine_path: str | Path) -> Path:
    """Parse the ONNX, apply flags and profile, reuse/update the timing cache, serialize the
    engine. Needs `tensorrt` and a CUDA GPU; DereflectError otherwise."""
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - PyPI stubs fail in several ways
        raise DereflectError(
            None,
            f"TensorRT is not usable here: `import tensorrt` failed ({first_line(exc, limit=10_000)}); "
            "pip install 'dereflect[tensorrt]' on a machine with a CUDA GPU and NVIDIA's package index",
        ) from None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(plan.onnx):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise DereflectError(plan.onnx, f"TensorRT could not parse the ONNX: {errors[:3]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.input_name, plan.min_shape, plan.opt_shape, plan.max_shape)
    for i in range(network.num_inputs):
        if network.get_input(i).name == COLOUR_INPUT:  # the photo-colour feed (N,13,1,1): N as the image's
            profile.set_shape(COLOUR_INPUT, *((shape[0], 13, 1, 1) for shape in (plan.min_shape, plan.opt_shape, plan.max_shape)))
    config.add_optimization_profile(profile)
    cache_path = Path(plan.timing_cache)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DereflectError(plan.onnx, "TensorRT failed to build the engine (see its log above)")
    cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    engine_path = Path(engine_path)
    engine_path.write_bytes(memoryview(serialized))
    return engine_path


def tensorrt_runner(engine_path: str | Path):
    """`run(NCHW float32, photo-colour feed or None) -> NCHW float32` through a serialized engine,
    by the runtime's backend (TensorRT 10 tensor API, CUDA buffers from torch). Only reachable where
    `format_status('tensorrt').can_run`; this code path cannot be exercised on machines without
    TensorRT (the CI ones)."""
    from dereflect.export.onnx import graph_feeds
    from dereflect.runtime.backends.tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend(Path(engine_path))
    inputs = [backend.input_name, *([backend.colour_input] if backend.colour_input else [])]
    return lambda batch, colour=None: backend._run(graph_feeds(inputs, batch, colour))[0]
