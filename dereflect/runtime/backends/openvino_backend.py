"""OpenVINO: runs an IR folder (xml + bin), or an .onnx directly, on the CPU plugin.

fp32 artifacts are compiled with INFERENCE_PRECISION_HINT=f32: on CPUs with AVX-512 BF16 or AMX
the plugin would otherwise compute in bf16 and an "fp32" model would not give fp32 numbers.
fp16/int8 artifacts keep the plugin's own choice (they already traded precision for speed).
The model is compiled once with dynamic H/W; one infer request is reused for every tile.
A photo cut into tiles runs them through a second compilation with the THROUGHPUT hint (one stream
per core, one request per stream, `infer_stream`): a 2-core CPU runs two tiles at once instead of
splitting each small tile's convolutions across both cores, and the next tile is cut and converted
while they run (student-nano INT8, 12 MP in 20 tiles: 0.86 -> 0.70 s here). The same kernels and
precision, so the numbers are the same as tile by tile.
The shipped artifacts (dereflect/weights/, what `dereflect remove` runs by default) are compiled
through OpenVINO's model cache (`compile_cache_dir`): a later run loads the compiled blob instead
of compiling again (0.18 -> 0.03 s CPU for student-nano INT8 here). Other models are not cached, so
the cache holds only the few shipped models. DEREFLECT_NO_CACHE=1 turns it off.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError, first_line
from dereflect.runtime.backends.base import (
    COLOUR_INPUT,
    COLOUR_OUTPUT,
    Backend,
    check_image_input,
    fixed_size,
    input_frames,
    io_names,
    size_multiple,
)


def ir_xml(path: Path, manifest: dict[str, Any] | None) -> Path:
    """The model file OpenVINO reads: the IR's .xml (named in the manifest, or the only one), or an .onnx."""
    if path.is_file():
        return path
    named = ((manifest or {}).get("openvino") or {}).get("xml")
    if named and (path / named).is_file():
        return path / named
    xmls = sorted(path.glob("*.xml"))
    if len(xmls) != 1 or not xmls[0].with_suffix(".bin").is_file():
        raise DereflectError(path, "not an OpenVINO IR folder (needs one .xml and its .bin)")
    return xmls[0]


def compile_cache_dir(model_file: Path) -> Path | None:
    """Where OpenVINO caches the compiled model, for a shipped artifact; None otherwise (or when off).

    $DEREFLECT_CACHE_DIR, else the user's cache folder ($XDG_CACHE_HOME or ~/.cache; macOS
    ~/Library/Caches; Windows %LOCALAPPDATA%), then dereflect/openvino. None when it cannot be made.
    """
    shipped = Path(str(resources.files("dereflect") / "weights"))  # resolve.WEIGHTS_DIR (not imported: resolve imports the backends)
    if os.environ.get("DEREFLECT_NO_CACHE") or not model_file.resolve().is_relative_to(shipped.resolve()):
        return None
    root = os.environ.get("DEREFLECT_CACHE_DIR")
    if not root:
        if sys.platform == "darwin":
            base = Path.home() / "Library" / "Caches"
        elif sys.platform == "win32":
            base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        else:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        root = str(base / "dereflect")
    folder = Path(root) / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def import_openvino() -> Any:
    """`import openvino` for running models: without its model converter, unless something loaded it.

    openvino/__init__.py imports the converter (`openvino.tools.ovc`, for `openvino.convert_model`)
    eagerly, and that pulls its telemetry client (urllib, http.client, email): 0.07 of the 0.10 s the
    import takes here, at the start of every `dereflect remove`, for a function the runtime never
    calls. Marking the converter absent while openvino initialises makes that import fail the way
    openvino expects (it catches ImportError); the mark is removed at once, so `openvino.tools.ovc`
    imports normally afterwards, and `openvino.convert_model` is resolved on first use (the exporter).
    """
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    marked = sys.modules.setdefault("openvino.tools.ovc", None) is None
    try:
        import openvino
    finally:
        if marked and sys.modules.get("openvino.tools.ovc", False) is None:
            del sys.modules["openvino.tools.ovc"]
    if marked and not hasattr(openvino, "convert_model"):

        def converter(name: str) -> Any:  # module __getattr__ (PEP 562)
            if name == "convert_model":
                from openvino.tools.ovc import convert_model

                openvino.convert_model = convert_model
                return convert_model
            raise AttributeError(f"module 'openvino' has no attribute {name!r}")

        openvino.__getattr__ = converter
    return openvino


class OpenVinoBackend(Backend, name="openvino", extra="openvino"):
    """A compiled model and its infer request."""

    def __init__(self, path: Path, manifest: dict[str, Any] | None = None, device: str | None = None) -> None:
        ov = import_openvino()
        device = device or "CPU"
        manifest = manifest or {}
        precision = manifest.get("precision", "fp32")
        config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        model_file = ir_xml(path, manifest)
        cache = compile_cache_dir(model_file)
        if cache is not None:
            config["CACHE_DIR"] = str(cache)
        self._compile_args = (path, str(model_file), device, config)
        self._streams: Any = None  # the THROUGHPUT compilation, made on the first tiled photo
        self.compiled = self._compile(config)
        self.input_name, output_name = io_names(manifest, self.compiled.input(0).any_name, self.compiled.output(0).any_name)
        port = self.compiled.input(self.input_name)
        shape = port.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
        element = port.get_element_type().get_type_name()
        dtype = {"f32": "float32", "f16": "float16", "u8": "uint8"}.get(element, element)
        self.frames = input_frames(manifest)
        check_image_input(path, self.input_name, dims, dtype, self.frames)
        self.output = self.compiled.output(output_name)
        if COLOUR_INPUT in {name for port in self.compiled.inputs for name in port.get_names()}:
            self.colour_input = COLOUR_INPUT  # a photo's tiles share one colour estimate (base.photo_context)
        self.request = self.compiled.create_infer_request()
        self.multiple = size_multiple(manifest)
        self.fixed = fixed_size(manifest, dims)  # a fixed-shape .onnx compiles static: tiles of that size
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.where = device.lower()
        self.detail = f"openvino {ov.get_version().split('-')[0]} on {device} (inference precision {hint})"

    def _compile(self, config: dict[str, str]) -> Any:
        ov = import_openvino()
        path, model_file, device, _ = self._compile_args
        try:
            return ov.Core().compile_model(model_file, device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with long text
            raise DereflectError(path, f"OpenVINO cannot compile this model ({first_line(exc, limit=10_000)})") from None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer(self.feeds(batch, self.input_name))
        return np.array(result[self.output], copy=True)  # the request's buffer is reused by the next call

    def estimate_colour(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer(self.own_feeds(batch, self.input_name))
        return np.array(result[self.compiled.output(COLOUR_OUTPUT)], copy=True)

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Tiles in flight on every stream at once; results in input order (see the module docstring)."""
        if self._streams is None:
            self._streams = self._compile({**self._compile_args[3], "PERFORMANCE_HINT": "THROUGHPUT"})
        count = max(1, int(self._streams.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        idle = deque(self._streams.create_infer_request() for _ in range(count))
        running: deque[Any] = deque()
        try:
            for batch in batches:
                if not idle:
                    yield self._collect(running, idle)
                request = idle.popleft()
                request.start_async(self.feeds(batch, self.input_name))  # copies the input: the caller may reuse it
                running.append(request)
            while running:
                yield self._collect(running, idle)
        finally:
            for request in running:  # the consumer stopped early (an error): leave nothing running
                request.wait()

    def _collect(self, running: deque[Any], idle: deque[Any]) -> np.ndarray:
        request = running.popleft()
        request.wait()
        idle.append(request)
        return np.array(request.get_tensor(self.output).data, copy=True)
