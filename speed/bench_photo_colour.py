"""What the shared photo-colour estimate changes on a big photo cut into tiles, and what it costs.

A student with a global colour path estimates a colour transform from its whole input. Cut into tiles,
each tile would estimate its own; the runtime instead runs the graph once on a 512 px copy of the photo
and feeds that estimate to every tile (runtime/backends/base.py photo_context). For each exported
artifact, on the same photo, this prints:

- how far the tiled output is from the one-piece PyTorch output (the student on the whole photo at
  once, its own estimate): with the shared estimate and with per-tile estimates, mean |diff| in 8-bit
  levels and the share of pixels more than 2 levels off;
- the spread of the per-tile estimates (how much the tiles disagree about the colour);
- the time of a tiled run with and without the estimate pass (medians, interleaved).

    .venv/bin/python speed/bench_photo_colour.py PHOTO ARTIFACT [ARTIFACT...] --side 2048 --tile 512 [--json out.json]

PHOTO is resized (Lanczos) so its long side is --side; the one-piece torch reference needs that much
memory at once, which is why it is not run at 12 MP.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.images import read_rgb  # noqa: E402
from dereflect.runtime import load  # noqa: E402


def _resized(path: Path, side: int) -> np.ndarray:
    from PIL import Image

    photo = read_rgb(path)
    h, w = photo.shape[:2]
    scale = side / max(h, w)
    size = (round(w * scale), round(h * scale))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


def _per_tile(session):
    """The session with the shared estimate switched off (each tile its own), as a context."""

    @contextlib.contextmanager
    def switched():
        saved = session.impl.photo_context
        session.impl.photo_context = lambda image: contextlib.nullcontext()
        try:
            yield
        finally:
            session.impl.photo_context = saved

    return switched()


def _tile_estimates(session, photo: np.ndarray) -> np.ndarray:
    """Each tile's own colour estimate (12 values per tile), from the tiles the session plans."""
    from dereflect.runtime.tiling import network_input

    plan = session.plan(*photo.shape[:2])
    side = plan.tile_h, plan.tile_w
    rows = []
    for y in plan.ys:
        for x in plan.xs:
            crop = photo[y : y + side[0], x : x + side[1]]
            rows.append(np.asarray(session.impl.estimate_colour(network_input(crop, *side))).ravel())
    return np.stack(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo", type=Path)
    ap.add_argument("artifacts", nargs="+", type=Path, help="exported artifacts with a photo_colour input (and their manifests)")
    ap.add_argument("--side", type=int, default=2048, help="long side the photo is resized to")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    photo = _resized(args.photo, args.side)
    rows = []
    for artifact in args.artifacts:
        session = load(artifact, tile=args.tile)
        if session.impl.colour_input is None:
            sys.exit(f"error: {artifact}: no photo_colour input (a student without a global colour path, or an old export)")
        checkpoint = json.loads(Path(f"{artifact}.json").read_text())["source"]["model"]
        whole = load(checkpoint, backend="torch").run(photo).astype(np.int16)  # one piece, its own estimate
        shared = session.run(photo).astype(np.int16)
        with _per_tile(session):
            per_tile = session.run(photo).astype(np.int16)
        estimates = _tile_estimates(session, photo)
        times: dict[str, list[float]] = {"shared": [], "per_tile": []}
        for _ in range(args.runs):
            for mode in times:
                started = time.perf_counter()
                with _per_tile(session) if mode == "per_tile" else contextlib.nullcontext():
                    session.run(photo)
                times[mode].append(time.perf_counter() - started)
        row = {
            "artifact": artifact.name,
            "model": checkpoint,
            "photo": f"{args.photo.name} at {photo.shape[1]}x{photo.shape[0]}",
            "tiles": session.plan(*photo.shape[:2]).count,
            "shared_vs_whole_mean": round(float(np.abs(shared - whole).mean()), 3),
            "shared_vs_whole_over2": round(float((np.abs(shared - whole) > 2).mean()), 4),
            "per_tile_vs_whole_mean": round(float(np.abs(per_tile - whole).mean()), 3),
            "per_tile_vs_whole_over2": round(float((np.abs(per_tile - whole) > 2).mean()), 4),
            "tile_estimate_spread": round(float(estimates.std(0).mean()), 5),
            "shared_s": round(statistics.median(times["shared"]), 3),
            "per_tile_s": round(statistics.median(times["per_tile"]), 3),
        }
        rows.append(row)
        print(json.dumps(row))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
