"""Score checkpoints on the real dev pairs (per image and mean): the README's results table.

Real dev set = ../shared/data/real_pairs_locationaware (blended/ + transmission/) and
real_flash_demo (`*_ambient.jpg` photo through glass vs `*_ambient_T.jpg` transmission).
Images run at full resolution (padded to the network's multiple), scored with dereflect.metrics.
Besides checkpoints, two baselines: `identity` (the photo) and `blur` (the photo through a Gaussian
of sigma 2 px) — the second is a metric sanity check: it removes no reflection, yet on pairs whose
ground truth is misaligned with the photo it scores a better LMSE than the photo. `oracle-gain` is
an upper bound on what a global colour correction alone can earn: it sees the ground truth and fits
one gain and offset per channel (least squares, photo -> ground truth) and changes nothing else. Means are given
over all pairs and over the pairs whose measured ground-truth shift is at most
metrics.ALIGNED_MAX_SHIFT (1 px; the GT shift does not depend on the model).

    .venv/bin/python tools/eval_dev.py identity blur runs/gpu1/student-nano/best.safetensors ... [--json out.json]
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

from dereflect.evaluate import EvalResult, find_pairs  # noqa: E402
from dereflect.images import from_float, read_rgb  # noqa: E402
from dereflect.metrics import gt_shift, score  # noqa: E402
from dereflect.models import load_checkpoint  # noqa: E402
from dereflect.models.blocks import pad_to_multiple  # noqa: E402


def dev_pairs(shared: Path) -> list[tuple[str, Path, Path]]:
    pairs = [(f"locationaware/{p.name}", p.blended, p.transmission) for p in find_pairs(shared / "real_pairs_locationaware")]
    for photo in sorted((shared / "real_flash_demo").glob("*_ambient.jpg")):
        target = photo.with_name(photo.stem + "_T.jpg")
        if target.is_file():
            pairs.append((f"flash/{photo.stem}", photo, target))
    return pairs


def oracle_gain(img: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The photo with the per-channel gain and offset that best map it onto `gt` (least squares):
    how much of a score a model could earn by brightening/re-colouring alone."""
    x, y = img.reshape(-1, 3).astype(np.float64), gt.reshape(-1, 3).astype(np.float64)
    out = np.empty_like(x)
    for c in range(3):
        gain, offset = np.polyfit(x[:, c], y[:, c], 1)
        out[:, c] = gain * x[:, c] + offset
    return from_float(out.reshape(img.shape) / 255.0)


def predictor(spec: str):
    """A function (photo, ground truth) -> estimate; only `oracle-gain` looks at the ground truth."""
    if spec == "identity":
        return lambda img, gt: img
    if spec == "blur":
        from scipy.ndimage import gaussian_filter

        return lambda img, gt: from_float(gaussian_filter(img / 255.0, (2, 2, 0)))
    if spec == "oracle-gain":
        return oracle_gain
    path, _, variant = spec.partition(":")
    model = load_checkpoint(path, expect="student")
    if variant == "no-global":  # the same student with its global colour path switched off: what that path adds
        if getattr(model, "colour", None) is None:
            raise SystemExit(f"error: {path}: this student has no global colour path")
        model.colour = None
    elif variant:
        raise SystemExit(f"error: {spec}: unknown variant '{variant}' (no-global)")

    def run(img: np.ndarray, gt: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        x, (h, w) = pad_to_multiple(x, model.size_multiple)
        with torch.no_grad():
            y = model(x)[0, :, :h, :w]
        return from_float(y.permute(1, 2, 0).numpy())

    return run


def _cell(row: dict) -> str:
    return f"{row['ssim']:.4f} / {row['lmse']:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "models",
        nargs="+",
        help="'identity', 'blur', 'oracle-gain' or student checkpoints (CKPT:no-global: without its global colour path)",
    )
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument(
        "--pairs", type=Path, help="score a paired folder (blended/ + transmission/) instead of the dev pairs, e.g. .data/pairs_val"
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", action="store_true", help="also print a per-image SSIM/LMSE table")
    args = ap.parse_args()
    pairs = [(p.name, p.blended, p.transmission) for p in find_pairs(args.pairs)] if args.pairs else dev_pairs(args.shared)
    images = [(name, read_rgb(b), read_rgb(t)) for name, b, t in pairs]
    shifts = {name: gt_shift(gt, img) for name, img, gt in images}
    table: dict[str, EvalResult] = {}
    for spec in args.models:
        run = predictor(spec)
        rows = [{"name": n, **score(gt, run(img, gt)), "gt_shift": shifts[n]} for n, img, gt in images]
        table[spec] = result = EvalResult(rows=rows)
        for label, mean in (("all", result.mean), (f"aligned ({len(result.aligned_rows)})", result.aligned_mean)):
            print(
                f"{spec:60s} {label:12s} PSNR {mean['psnr']:.2f}  SSIM {mean['ssim']:.4f}  LMSE {mean['lmse']:.4f}  NCC {mean['ncc']:.4f}"
            )
    if args.markdown:
        print("| image | GT shift (px) | " + " | ".join(table) + " |")
        print("|---|---:|" + "---:|" * len(table))
        for i, name in enumerate(shifts):
            print(f"| {name} | {shifts[name]:.1f} | " + " | ".join(_cell(t.rows[i]) for t in table.values()) + " |")
        for label, attr in (("mean, all", "mean"), ("mean, aligned GT", "aligned_mean")):
            cells = (f"**{_cell(getattr(t, attr))}** ({getattr(t, attr)['psnr']:.2f})" for t in table.values())
            print(f"| **{label}** (PSNR) | | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({spec: r.to_json(spec, args.shared) for spec, r in table.items()}, indent=2))


if __name__ == "__main__":
    main()
