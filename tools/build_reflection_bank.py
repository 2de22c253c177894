"""Build the bank of real reflection layers from saggy361's TRAINING scenes.

Only scene_split(names, 0.1, seed=0)'s training side is read (the 11 val scenes select models;
the dev sets real_pairs_locationaware and real_flash_demo are never touched). Pairs whose ground
truth is shifted more than --max-shift px (metrics.gt_shift) are skipped; each kept pair's
reflection is cut out by real_reflections.extract_reflection (T shifted onto the photo, gain
fitted, T's leaked structure removed) and rejected if its leak score stays above --max-leak.
Writes BANK/layers/NAME.png (16-bit, linear light) and BANK/bank.json (per layer: source,
scene, shift, gain, leak before/after; and the leak summary), outside the repository's tracked
files by default (.data/ is git-ignored).

    .venv/bin/python tools/build_reflection_bank.py --shared /work/shared/data --out .data/reflections
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.data import real_reflections as rr  # noqa: E402
from dereflect.data.datasets import scene_of  # noqa: E402
from dereflect.files import write_bytes_atomic  # noqa: E402
from dereflect.images import read_rgb, write_image  # noqa: E402
from dereflect.metrics import ALIGNED_MAX_SHIFT, gt_shift  # noqa: E402


def chance_leak(layers: list[tuple[str, np.ndarray]], pairs: dict[str, Path], k: int = 40) -> float:
    """Leak score of layers against ANOTHER scene's T: what an independent reflection scores."""
    scores = []
    for name, r in layers[:: max(1, len(layers) // k)]:
        other = next((n for n, _ in layers[::-1] if scene_of(n) != scene_of(name)), None)
        if other is None:
            continue
        t = rr.srgb_to_linear(read_rgb(pairs[other]) / 255.0)
        if t.shape == r.shape:
            scores.append(rr.leak_score(r, t))
    return float(np.mean(scores)) if scores else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / ".data" / "reflections")
    ap.add_argument("--max-shift", type=float, default=ALIGNED_MAX_SHIFT, help="px; metrics.ALIGNED_MAX_SHIFT by default")
    ap.add_argument("--max-leak", type=float, default=rr.MAX_LEAK)
    ap.add_argument("--min-mean", type=float, default=0.002, help="skip layers with (almost) no reflection (mean linear R)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N training pairs (a quick look)")
    args = ap.parse_args()
    pairs = rr.saggy_training_pairs(args.shared)[: args.limit or None]
    (args.out / rr.LAYER_DIR).mkdir(parents=True, exist_ok=True)
    entries, skipped, kept = [], {"shift": 0, "empty": 0, "leak": 0}, []
    t0 = time.time()
    for i, (name, bpath, tpath) in enumerate(pairs):
        blended, trans = read_rgb(bpath), read_rgb(tpath)
        shift = gt_shift(trans, blended)
        if shift > args.max_shift:
            skipped["shift"] += 1
            continue
        layer = rr.extract_reflection(blended, trans)
        info = {"file": f"{name}.png", "source": f"real_pairs_saggy361/{bpath.name}", "scene": scene_of(name),
                "gt_shift": round(shift, 3), **layer.info}
        if info["mean_r"] < args.min_mean:
            skipped["empty"] += 1
            continue
        if info["leak"] > args.max_leak:
            skipped["leak"] += 1
            continue
        write_image(args.out / rr.LAYER_DIR / info["file"], np.clip(layer.reflection, 0.0, 1.0).astype(np.float32), bit_depth=16)
        entries.append(info)
        if len(entries) % 20 == 1:  # a sample for the chance level (all of them would be GBs)
            kept.append((name, layer.reflection))
        if i % 50 == 0:
            print(f"{i}/{len(pairs)} {name}: shift {shift:.2f} gain {info['gain']} leak {info['leak_naive']} -> {info['leak']}"
                  f" ({time.time() - t0:.0f} s)", flush=True)
    summary = {"pairs_read": len(pairs), "kept": len(entries), "skipped": skipped,
               "leak_naive_mean": round(float(np.mean([e["leak_naive"] for e in entries])), 4),
               "leak_mean": round(float(np.mean([e["leak"] for e in entries])), 4),
               "leak_chance": round(chance_leak(kept, {n: t for n, _, t in pairs}), 4),
               "max_shift": args.max_shift, "max_leak": args.max_leak, "scenes": len({e["scene"] for e in entries})}
    index = {"format": rr.BANK_FORMAT, "version": 1, "encoding": "16-bit PNG, linear-light R (not sRGB), [0, 1]",
             "made_by": "tools/build_reflection_bank.py", "summary": summary, "layers": entries}
    write_bytes_atomic(args.out / rr.BANK_INDEX, json.dumps(index, indent=1).encode())
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
