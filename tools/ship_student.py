"""Ship a trained student: dereflect/weights/NAME.safetensors + NAME.json with its dev-set scores.

What `--model NAME` then loads by name. The sidecar carries the training record the checkpoint
already has (config, step, data description, metrics at selection) plus what a reader needs to
judge it, measured here with tools/eval_dev.py's code: the real dev pairs at full resolution (all,
and the ones whose ground truth is aligned), with identity beside it; saggy-val (the 93 held-out
pairs of .data/pairs_val) when that folder exists; and, for a student with a global colour path,
the aligned score without that path. Each file is written atomically, the weights last.

    .venv/bin/python tools/ship_student.py runs/mnv2-rt/best.safetensors --name student-mnv2-rt \\
        --provenance "results/cpu-mnv2-rt/: ..."
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.evaluate import EvalResult, find_pairs  # noqa: E402
from dereflect.images import read_rgb  # noqa: E402
from dereflect.metrics import gt_shift, score  # noqa: E402
from dereflect.models import load_checkpoint  # noqa: E402
from tools.eval_dev import dev_pairs, predictor  # noqa: E402

WEIGHTS = ROOT / "dereflect" / "weights"


def evaluate(specs: list[str], pairs: list[tuple[str, Path, Path]]) -> dict[str, EvalResult]:
    images = [(name, read_rgb(b), read_rgb(t)) for name, b, t in pairs]
    shifts = {name: gt_shift(gt, img) for name, img, gt in images}
    out = {}
    for spec in specs:
        run = predictor(spec)
        out[spec] = EvalResult(rows=[{"name": n, **score(gt, run(img, gt)), "gt_shift": shifts[n]} for n, img, gt in images])
    return out


def rounded(mean: dict) -> dict:
    return {k: round(float(mean[k]), 5) for k in ("psnr", "ssim", "lmse")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="a student checkpoint (.safetensors with its .json beside it)")
    ap.add_argument("--name", required=True, help="shipped name (the checkpoint's model preset, e.g. student-mnv2-rt)")
    ap.add_argument("--provenance", required=True, help="where it came from: run folder, recipe, steps, wall time")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--saggy-val", type=Path, default=ROOT / ".data" / "pairs_val")
    args = ap.parse_args()

    model = load_checkpoint(args.checkpoint, expect="student")
    if model.model_name != args.name:  # type: ignore[attr-defined]
        print(f"error: {args.checkpoint}: is a {model.model_name}, not {args.name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 2
    sidecar = args.checkpoint.with_suffix(".json")
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    ckpt = str(args.checkpoint)
    specs = ["identity", ckpt] + ([f"{ckpt}:no-global"] if getattr(model, "colour", None) is not None else [])
    dev = evaluate(specs, dev_pairs(args.shared))
    record = {
        "set": "real_pairs_locationaware (8 with ground truth) + real_flash_demo (3), full resolution; tools/eval_dev.py",
        "aligned": f"pairs whose ground truth is shifted <= 1 px from the photo (dereflect.metrics.gt_shift): {len(dev[ckpt].aligned_rows)} of {len(dev[ckpt].rows)}",
        "student_all": rounded(dev[ckpt].mean),
        "identity_all": rounded(dev["identity"].mean),
        "student_aligned": rounded(dev[ckpt].aligned_mean),
        "identity_aligned": rounded(dev["identity"].aligned_mean),
    }
    if len(specs) == 3:
        record["student_without_global_path_aligned"] = rounded(dev[specs[2]].aligned_mean)
    info["dev_pairs"] = record
    for label, key in (("all", "all"), ("aligned", "aligned")):
        print(f"{args.name} dev {label}: SSIM {record[f'student_{key}']['ssim']:.4f} (identity {record[f'identity_{key}']['ssim']:.4f})")
    if args.saggy_val.is_dir():
        pairs = [(p.name, p.blended, p.transmission) for p in find_pairs(args.saggy_val)]
        val = evaluate(["identity", ckpt], pairs)
        info["saggy_val"] = {
            "set": f"{args.saggy_val.relative_to(ROOT) if args.saggy_val.is_relative_to(ROOT) else args.saggy_val} "
            f"(tools/pack_gpu_data.py: {len(pairs)} pairs of scenes never trained on)",
            "student_ssim": round(float(val[ckpt].mean["ssim"]), 5),
            "identity_ssim": round(float(val["identity"].mean["ssim"]), 5),
        }
        print(f"{args.name} saggy-val: SSIM {info['saggy_val']['student_ssim']:.4f} (identity {info['saggy_val']['identity_ssim']:.4f})")
    info["provenance"] = args.provenance
    with tempfile.TemporaryDirectory(dir=WEIGHTS, prefix=".ship-") as tmp:
        staged = Path(tmp) / f"{args.name}.safetensors"
        shutil.copy2(args.checkpoint, staged)
        staged.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(staged.with_suffix(".json"), WEIGHTS / f"{args.name}.json")
        os.replace(staged, WEIGHTS / f"{args.name}.safetensors")
    print(f"shipped {WEIGHTS.relative_to(ROOT)}/{args.name}.safetensors (+ .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
