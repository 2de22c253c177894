"""The backend contract: everything Session, the tiler and the benchmark read from a backend.

A backend runs the network and nothing else: `infer((N,3,H,W) float32 in [0,1]) -> same shape`.
It also says what input sizes it takes (`multiple`, `min_side`, `max_side`, `fixed`: the tiler
plans around them), where it computes (`label`, for ledgers: 'onnxruntime/cpu') and, for people,
what it is (`detail`: versions, device). `problem()` says, before anything is loaded, why it
cannot run on this machine. OpenVINO's model_api declares its InferenceAdapter the same way.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dereflect.errors import DereflectError

#: The second input and output of an exported student with a global colour path (models/mobile_student.py,
#: PhotoColourGraph): (N,13,1,1) the photo's colour transform and its weight in; (N,12) the input's own out.
COLOUR_INPUT = "photo_colour"
COLOUR_OUTPUT = "colour"


def own_colour(n: int) -> np.ndarray:
    """The COLOUR_INPUT feed of weight 0 for a batch of n: every input its own estimate (the student as trained)."""
    return np.zeros((n, 13, 1, 1), np.float32)


#: Long side of the downscaled copy a photo's image-level estimate is computed on (`photo_context`).
PHOTO_SIDE = 512


class Backend:
    """Base class of every backend (one module each in this folder, registered in __init__.py).

    Subclasses declare `name` (what `--backend` takes), `module` (the Python module it needs) and
    `extra` (the pip extra that brings it) in their class line, `class X(Backend, name=..., module=...)`,
    build themselves from (path, manifest, device), and set the size fields when they differ from
    the defaults.
    """

    name: ClassVar[str]
    module: ClassVar[str]
    extra: ClassVar[str | None] = None

    def __init_subclass__(cls, name: str | None = None, module: str | None = None, extra: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name, cls.module, cls.extra = name, module or name, extra

    #: H and W of every input must be multiples of this (the network's stride).
    multiple: int = 8
    #: The smallest input side it takes (a TensorRT profile's minimum); smaller canvases are padded.
    min_side: int = 0
    #: The largest input side it takes (tiles are no larger); None: any.
    max_side: int | None = None
    #: The one (H, W) it takes (enumerated Core ML shapes); None: any.
    fixed: tuple[int, int] | None = None
    #: Where it computes, lower case ("cpu", "cuda"); None where the backend has one place only.
    where: str | None = None
    #: One line for people: library version and device.
    detail: str = ""
    #: Frames per sample of a burst model ((N, T, 3, H, W) input, dereflect/burst); None: one image.
    frames: int | None = None
    #: The graph's photo-colour input (COLOUR_INPUT) when it has one; a backend that finds it sets this.
    colour_input: str | None = None
    _photo_colour: np.ndarray | None = None  # (12,1,1): the photo's estimate while its tiles run

    def __init__(self, path: Path | Any, manifest: dict[str, Any] | None = None, device: str | None = None) -> None:
        raise NotImplementedError

    @classmethod
    def problem(cls) -> str | None:
        """Why this backend cannot run on this machine, or None when it can. Cheap: no model is loaded."""
        if importlib.util.find_spec(cls.module) is None:
            hint = f": pip install 'dereflect[{cls.extra}]'" if cls.extra else ""
            return f"Python module '{cls.module}' is not installed{hint}"
        return None

    @property
    def label(self) -> str:
        """'onnxruntime/cpu', 'openvino/cpu', 'torch/cuda': the backend and where it computes (ledger rows)."""
        return f"{self.name}/{self.where}" if self.where else self.name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N,3,H,W) float32 in [0,1] -> the transmission, same shape and dtype."""
        raise NotImplementedError

    def estimate_colour(self, batch: np.ndarray) -> np.ndarray:
        """(1,3,H,W) -> the graph's COLOUR_OUTPUT for it, (1,12) (run with weight 0); backends
        that find a COLOUR_INPUT implement it."""
        raise NotImplementedError

    def colour_feed(self, n: int) -> np.ndarray:
        """The COLOUR_INPUT of a batch of n: the photo's estimate with weight 1 inside `photo_context`,
        else zeros (weight 0: every input its own estimate, the student as trained)."""
        feed = own_colour(n)
        if self._photo_colour is not None:
            feed[:, :12] = self._photo_colour
            feed[:, 12] = 1.0
        return feed

    def feeds(self, batch: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
        """{input: batch}, plus the COLOUR_INPUT feed when the graph has one."""
        if self.colour_input is None:
            return {input_name: batch}
        return {input_name: batch, self.colour_input: self.colour_feed(batch.shape[0])}

    def own_feeds(self, batch: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
        """{input: batch, COLOUR_INPUT: weight 0}: what `estimate_colour` runs, inside a photo's context too."""
        return {input_name: batch, COLOUR_INPUT: own_colour(len(batch))}

    @contextmanager
    def photo_context(self, image: np.ndarray) -> Iterator[None]:
        """While a photo's tiles run: what the model estimates once per photo (HxWx3 `image`).

        A graph with a COLOUR_INPUT (the MobileNetV2 students' global colour transform) runs once
        on a copy of the photo downscaled to PHOTO_SIDE (`tiling.photo_copy`), and its estimate is fed
        to every tile; other graphs have nothing to share. (TorchBackend has its own, same idea.)
        """
        if self.colour_input is None:
            yield
            return
        from dereflect.runtime.tiling import photo_copy

        small = photo_copy(image, PHOTO_SIDE, self.multiple, self.fixed, self.min_side, self.max_side)
        self._photo_colour = np.asarray(self.estimate_colour(small), np.float32).reshape(12, 1, 1)
        try:
            yield
        finally:
            self._photo_colour = None

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """`infer` over many inputs (the tiles of one photo), results in input order.

        One at a time here; a backend that can run several requests at once overrides it (OpenVINO:
        one stream per core, and the next tile is cut and converted while the previous ones run).
        The iterable is read lazily, one input ahead of the results at most per request in flight.
        """
        for batch in batches:
            yield self.infer(batch)


def io_names(manifest: dict[str, Any], default_in: str = "input", default_out: str = "transmission") -> tuple[str, str]:
    """The graph's input and output names, as the manifest (export's IO contract) records them."""
    inputs = [i for i in manifest.get("inputs") or [] if i.get("name") != COLOUR_INPUT] or [{"name": default_in}]
    outputs = [o for o in manifest.get("outputs") or [] if o.get("name") != COLOUR_OUTPUT] or [{"name": default_out}]
    return inputs[0]["name"], outputs[0]["name"]


def size_multiple(manifest: dict[str, Any]) -> int:
    """The H/W multiple the manifest's constraints give (8, the student's stride, when absent)."""
    return int((manifest.get("constraints") or {}).get("multiple_of", 8))


def input_frames(manifest: dict[str, Any]) -> int | None:
    """Frames per sample of a burst model, from the manifest's input shape (N, T, 3, H, W); None for
    an image model (N, 3, H, W). The model's input contract lives in the manifest, not in code."""
    inputs = manifest.get("inputs") or []
    shape = inputs[0].get("shape") if inputs and isinstance(inputs[0], dict) else None
    if isinstance(shape, list) and len(shape) == 5 and isinstance(shape[1], int):
        return int(shape[1])
    return None


def fixed_size(manifest: dict[str, Any], dims: list[int | None]) -> tuple[int, int] | None:
    """The one (H, W) a fixed-shape artifact takes (`--fixed-shape`): the graph's own static H and W
    (`dims` = its input dims, None where dynamic), else the manifest's `constraints.fixed_hw`;
    None for dynamic H/W. The tiler then pads every tile, and any smaller image, up to it."""
    if len(dims) == 4 and isinstance(dims[2], int) and isinstance(dims[3], int):
        return dims[2], dims[3]
    fixed = (manifest.get("constraints") or {}).get("fixed_hw")
    return (int(fixed[0]), int(fixed[1])) if fixed else None


def check_image_input(path: Path, name: str, dims: list[int | None], dtype: str, frames: int | None = None) -> None:
    """Refuse, at load time, a model whose input is not (N, 3, H, W) float32 (None = dynamic dim),
    or (N, frames, 3, H, W) for a burst model whose manifest says `frames`.

    Why here: otherwise a valid artifact of some other network loads fine and then every photo
    fails with the runtime's own shape message, once per file.
    """
    if frames is not None and len(dims) == 5 and dims[1] in (frames, None) and dims[2] in (3, None) and dtype == "float32":
        return
    if len(dims) != 4 or dims[1] not in (3, None) or dtype != "float32":
        shape = ", ".join("?" if d is None else str(d) for d in dims)
        raise DereflectError(
            path, f"model input '{name}' is {dtype} ({shape}); dereflect runs image models with a float32 (N, 3, H, W) input"
        )
