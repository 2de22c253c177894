"""Score checkpoints on the real dev pairs (per image and mean): the README's results table.

Real dev set = ../shared/data/real_pairs_locationaware (blended/ + transmission/) and
real_flash_demo (`*_ambient.jpg` photo through glass vs `*_ambient_T.jpg` transmission).
Images run at full resolution (padded to the network's multiple), scored with dereflect.metrics.

    .venv/bin/python tools/eval_dev.py identity runs/gpu1/student-nano/best.safetensors ... [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.evaluate import find_pairs  # noqa: E402
from dereflect.io import from_float, read_rgb  # noqa: E402
from dereflect.metrics import score  # noqa: E402
from dereflect.models import load_checkpoint  # noqa: E402
from dereflect.models.blocks import pad_to_multiple  # noqa: E402


def dev_pairs(shared: Path) -> list[tuple[str, Path, Path]]:
    pairs = [(f"locationaware/{p.name}", p.blended, p.transmission) for p in find_pairs(shared / "real_pairs_locationaware")]
    for photo in sorted((shared / "real_flash_demo").glob("*_ambient.jpg")):
        target = photo.with_name(photo.stem + "_T.jpg")
        if target.is_file():
            pairs.append((f"flash/{photo.stem}", photo, target))
    return pairs


def predictor(spec: str):
    if spec == "identity":
        return lambda img: img
    model = load_checkpoint(spec, expect="student")

    def run(img: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        x, (h, w) = pad_to_multiple(x, model.size_multiple)
        with torch.no_grad():
            y = model(x)[0, :, :h, :w]
        return from_float(y.permute(1, 2, 0).numpy())

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="'identity' or student checkpoints")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", action="store_true", help="also print a per-image SSIM/LMSE table")
    args = ap.parse_args()
    pairs = dev_pairs(args.shared)
    images = [(name, read_rgb(b), read_rgb(t)) for name, b, t in pairs]
    table: dict[str, dict] = {}
    for spec in args.models:
        run = predictor(spec)
        rows = {name: score(gt, run(img)) for name, img, gt in images}
        mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("psnr", "ssim", "lmse", "ncc")}
        table[spec] = {"rows": rows, "mean": mean}
        print(f"{spec:60s} PSNR {mean['psnr']:.2f}  SSIM {mean['ssim']:.4f}  LMSE {mean['lmse']:.4f}  NCC {mean['ncc']:.4f}")
    if args.markdown:
        names = list(next(iter(table.values()))["rows"])
        print("| image | " + " | ".join(table) + " |")
        print("|---|" + "---:|" * len(table))
        for name in names:
            print(f"| {name} | " + " | ".join(f"{t['rows'][name]['ssim']:.4f} / {t['rows'][name]['lmse']:.4f}" for t in table.values()) + " |")
        print("| **mean** | " + " | ".join(f"**{t['mean']['ssim']:.4f} / {t['mean']['lmse']:.4f}**" for t in table.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
