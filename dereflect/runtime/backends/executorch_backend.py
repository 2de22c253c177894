"""ExecuTorch: runs a .pte program (XNNPACK delegate) through ExecuTorch's Python runtime.

The same file runs in an Android/iOS app through ExecuTorch's C++ runtime; here it serves the
parity gate, the benchmark and `dereflect remove --model x.pte`. The program takes H and W up to
its memory plan's bound (the manifest's `max_side`; the tiler cuts larger images), or one fixed
size when the manifest says so. ExecuTorch's runtime hands back torch tensors, so this backend
imports torch (lazily: nothing is imported until a .pte is loaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dereflect.errors import DereflectError, first_line
from dereflect.runtime.backends.base import COLOUR_INPUT, Backend, own_colour, size_multiple


def load_method(path: str | Path):
    """The program's `forward`, loaded with ExecuTorch's Python runtime (DereflectError on a bad file)."""
    try:
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise DereflectError(
            path, f"ExecuTorch's runtime is not usable here ({first_line(exc)}): pip install 'dereflect[mobile]'"
        ) from None
    try:
        program = Runtime.get().load_program(Path(path))
        method = program.load_method("forward")
    except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError with its own codes
        raise DereflectError(path, f"ExecuTorch cannot load this program ({first_line(exc, limit=10_000)})") from None
    if method is None:
        raise DereflectError(path, "ExecuTorch program has no 'forward' method")
    return method


class ExecuTorchBackend(Backend, name="executorch", extra="mobile"):
    """The program's `forward` method, loaded once; batches run one image at a time."""

    def __init__(self, path: Path, manifest: dict[str, Any] | None = None, device: str | None = None) -> None:
        import torch

        manifest = manifest or {}
        self.method = load_method(path)
        meta = self.method.metadata
        colour = meta.num_inputs() == 2 and meta.num_outputs() == 2 and list(meta.input_tensor_meta(1).sizes()) == [1, 13, 1, 1]
        if colour:  # a PhotoColourGraph: (image, photo_colour) -> (transmission, colour); base.photo_context
            self.colour_input = COLOUR_INPUT
        elif meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise DereflectError(
                path, f"ExecuTorch program has {meta.num_inputs()} inputs and {meta.num_outputs()} outputs, expected one each"
            )
        sizes = list(meta.input_tensor_meta(0).sizes())
        if len(sizes) != 4 or sizes[1] != 3:
            raise DereflectError(path, f"ExecuTorch program input is {sizes}; dereflect runs image models with a (1, 3, H, W) input")
        constraints = manifest.get("constraints") or {}
        self.multiple = size_multiple(manifest)
        dynamic = (constraints.get("dynamic_axes") or {}).get("input")
        if dynamic and not constraints.get("fixed_hw"):
            # the metadata's sizes are the memory plan's upper bound
            self.max_side = int(constraints.get("max_side") or min(sizes[2], sizes[3]))
        else:  # a fixed-shape program, or no manifest (verify=False): run exactly the planned size
            self.fixed = (int(sizes[2]), int(sizes[3]))
        self._torch = torch
        from importlib import metadata

        try:
            from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

            threads = f", {_threadpool_get_thread_count()} threads"
        except Exception:  # noqa: BLE001 - only for the description
            threads = ""
        self.where = "cpu"
        self.detail = f"executorch {metadata.version('executorch')} (XNNPACK{threads})"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch, self.colour_feed(len(batch)) if self.colour_input else None)[0]

    def estimate_colour(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)[1]

    def run(self, batch: np.ndarray, colour: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(transmission, colour estimate or None), one image at a time; `colour`: the photo-colour
        feeds of a PhotoColourGraph program (weight 0 when None)."""
        torch = self._torch
        if self.colour_input and colour is None:
            colour = own_colour(len(batch))
        outs = []
        for i in range(len(batch)):
            args = [batch[i : i + 1]] + ([colour[i : i + 1]] if self.colour_input else [])
            outs.append(self.method.execute([torch.from_numpy(np.ascontiguousarray(a)) for a in args]))
        images = np.concatenate([o[0].numpy() for o in outs]).astype(np.float32, copy=False)
        colours = np.concatenate([o[1].numpy() for o in outs]) if self.colour_input else None
        return images, colours
