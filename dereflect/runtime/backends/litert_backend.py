"""LiteRT: runs a .tflite model through ai-edge-litert's interpreter (XNNPACK on the CPU).

The file's layout (NHWC from our export, NCHW accepted) and dtype (float32, or int8 IO with a
scale and zero point) are read from the model itself; the backend converts from and to the
runtime's NCHW float32. The model has one fixed input size: the tiler feeds tiles of exactly that
size (padding the last ones). torch is never imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError, first_line
from dereflect.runtime.backends.base import COLOUR_INPUT, Backend, own_colour, size_multiple


def interpreter(path: str | Path, threads: int | None = None):
    """A LiteRT interpreter with its tensors allocated (DereflectError on a bad file)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise DereflectError(path, f"ai-edge-litert is not usable here ({first_line(exc)}): pip install 'dereflect[mobile]'") from None
    try:
        interp = Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError with its own text
        raise DereflectError(path, f"LiteRT cannot load this model ({first_line(exc, limit=10_000)})") from None
    return interp


class LiteRTRunner:
    """One interpreter: NCHW float32 in, NCHW float32 out, whatever the file's layout and dtype.

    Why a class: the backend and the parity gate share the layout and int8 IO handling.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.interp = interpreter(path, threads)
        ins, outs = self.interp.get_input_details(), self.interp.get_output_details()
        # A PhotoColourGraph (models/mobile_student.py) also takes photo_colour (1,13,1,1) and returns colour
        # (1,12); LiteRT keeps no names from the torch graph, so the tensors are told apart by their size.
        small_in = [d for d in ins if int(np.prod(d["shape"])) == 13]
        small_out = [d for d in outs if int(np.prod(d["shape"])) == 12]
        self.colour_in = small_in[0] if len(ins) == 2 and len(small_in) == 1 else None
        self.colour_out = small_out[0] if len(outs) == 2 and len(small_out) == 1 else None
        if (self.colour_in is None) != (self.colour_out is None) or len(ins) != len(outs) or len(ins) not in (1, 2):
            raise DereflectError(path, f"LiteRT model has {len(ins)} inputs and {len(outs)} outputs, expected one each")
        self.inp = next(d for d in ins if d is not self.colour_in)
        self.out = next(d for d in outs if d is not self.colour_out)
        shape = [int(v) for v in self.inp["shape"]]
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise DereflectError(
                path, f"LiteRT model input is {shape}; dereflect runs image models with a (1, H, W, 3) or (1, 3, H, W) input"
            )
        self.nhwc = shape[3] == 3
        self.hw = (shape[1], shape[2]) if self.nhwc else (shape[2], shape[3])
        self.in_dtype = np.dtype(self.inp["dtype"])
        self.out_dtype = np.dtype(self.out["dtype"])
        if self.in_dtype.kind not in "fiu":
            raise DereflectError(path, f"LiteRT model input is {self.in_dtype}; expected float32 or int8")

    def _to_input(self, nchw: np.ndarray) -> np.ndarray:
        x = nchw.transpose(0, 2, 3, 1) if self.nhwc else nchw
        if self.in_dtype.kind == "f":
            return np.ascontiguousarray(x, dtype=self.in_dtype)
        scale, zero = self.inp["quantization"]
        info = np.iinfo(self.in_dtype)
        return np.ascontiguousarray(np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self.in_dtype))

    def _from_output(self, y: np.ndarray) -> np.ndarray:
        if self.out_dtype.kind != "f":
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - np.float32(zero)) * np.float32(scale)
        y = y.transpose(0, 3, 1, 2) if self.nhwc else y
        return np.ascontiguousarray(y, dtype=np.float32)

    def __call__(self, batch: np.ndarray, colour: np.ndarray | None = None) -> np.ndarray:
        return self.run(batch, colour)[0]

    def run(self, batch: np.ndarray, colour: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(transmission, colour estimate or None); `colour`: photo-colour feeds (weight 0 when None)."""
        if tuple(batch.shape[2:]) != self.hw:
            raise DereflectError(
                self.path, f"LiteRT model takes {self.hw[0]}x{self.hw[1]} inputs only, got {batch.shape[2]}x{batch.shape[3]}"
            )
        outs, colours = [], []
        for i in range(len(batch)):
            self.interp.set_tensor(self.inp["index"], self._to_input(batch[i : i + 1]))
            if self.colour_in is not None:
                feed = colour[i : i + 1] if colour is not None else own_colour(1)
                self.interp.set_tensor(self.colour_in["index"], np.ascontiguousarray(feed.reshape(self.colour_in["shape"]), np.float32))
            self.interp.invoke()
            outs.append(self._from_output(self.interp.get_tensor(self.out["index"])))
            if self.colour_out is not None:
                colours.append(self.interp.get_tensor(self.colour_out["index"]).reshape(1, 12).astype(np.float32))
        return np.concatenate(outs), (np.concatenate(colours) if colours else None)


class LiteRTBackend(Backend, name="litert", module="ai_edge_litert", extra="mobile"):
    """One interpreter with its tensors allocated once."""

    def __init__(self, path: Path, manifest: dict[str, Any] | None = None, device: str | None = None) -> None:
        from importlib import metadata

        threads = os.cpu_count() or 1
        self.runner = LiteRTRunner(path, threads=threads)
        self.fixed = self.runner.hw
        if self.runner.colour_in is not None:
            self.colour_input = COLOUR_INPUT  # a photo's tiles share one colour estimate (base.photo_context)
        self.multiple = size_multiple(manifest or {})
        self.where = "cpu"
        layout = "NHWC" if self.runner.nhwc else "NCHW"
        self.detail = f"ai-edge-litert {metadata.version('ai-edge-litert')} ({threads} threads, {layout} {self.runner.in_dtype.name} IO)"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.runner(batch, self.colour_feed(len(batch)) if self.colour_input else None)

    def estimate_colour(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.run(batch)[1]
