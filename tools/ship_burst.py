"""Ship a burst model into dereflect/weights: the trained teacher-base as `burst-base` (fp16 storage),
or a trained burst-mnv2 run's checkpoint as `burst-mnv2` (`--checkpoint`; fp32, 2.9 MB, as trained).

Why fp16 storage: the repo keeps files small (4.5 MB instead of 8.9 MB); the weights load back
into float32 (load_state_dict copies with a cast), and this script measures what the rounding
costs against the fp32 weights on synthesised 5-frame sequences before it writes anything.
Scores for the JSON come from tools/burst_eval.py's --json (held-out synthetic sequences).

    .venv/bin/python tools/ship_burst.py --teacher results/h200-round1/teacher/best.safetensors \\
        [--scores docs/burst_eval.json]
    .venv/bin/python tools/ship_burst.py --checkpoint runs/burst-mnv2/best.safetensors --provenance "..." \\
        [--scores docs/burst_eval.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect import metrics  # noqa: E402
from dereflect.export.calib import synthesize_sequences  # noqa: E402
from dereflect.models import create_model, load_checkpoint, save_checkpoint  # noqa: E402

NAME = "burst-base"


def _hwc255(chw: np.ndarray) -> np.ndarray:
    return np.clip(chw, 0, 1).transpose(1, 2, 0).astype(np.float64) * 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", type=Path, help="a teacher-base checkpoint: shipped as burst-base")
    source.add_argument("--checkpoint", type=Path, help="a burst-mnv2 checkpoint (dereflect train student): shipped as burst-mnv2")
    ap.add_argument("--provenance", default="", help="--checkpoint: where it came from (run, steps, hours), for the JSON")
    ap.add_argument("--scores", type=Path, help="tools/burst_eval.py --json output, copied into the JSON")
    ap.add_argument("--out", type=Path, help="default: dereflect/weights/NAME.safetensors")
    args = ap.parse_args()
    if args.checkpoint is not None:
        ship_checkpoint(args)
        return
    args.out = args.out or ROOT / "dereflect" / "weights" / f"{NAME}.safetensors"
    teacher = load_checkpoint(args.teacher, expect="teacher")
    info = teacher.checkpoint_info
    if info.get("model") != "teacher-base" or info["config"].get("privileged"):
        sys.exit(f"error: {args.teacher}: expected a teacher-base checkpoint without privileged inputs")
    burst = create_model(NAME, **{k: v for k, v in info["config"].items() if k != "privileged"})
    burst.load_state_dict(teacher.state_dict(), strict=True)
    burst.eval()
    half = copy.deepcopy(burst).half()
    half.model_name = NAME

    data = synthesize_sequences(8, 256, seed=7, frames=burst.input_frames)
    x = torch.from_numpy(data.images)
    with torch.no_grad():
        ref = burst(x).numpy()
        back = create_model(NAME, **{k: v for k, v in info["config"].items() if k != "privileged"})
        back.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
        got = back.eval()(x).numpy()
    ssim_ref = np.mean([metrics.ssim(_hwc255(g), _hwc255(o)) for g, o in zip(data.truth, ref)])
    ssim_got = np.mean([metrics.ssim(_hwc255(g), _hwc255(o)) for g, o in zip(data.truth, got)])
    parity = {
        "data": data.source,
        "max_abs_diff": float(np.abs(got - ref).max()),
        "mean_abs_diff": float(np.abs(got - ref).mean()),
        "ssim_drop": float(ssim_ref - ssim_got),
    }
    print(f"fp16 storage vs fp32 weights: {json.dumps(parity)}")
    if parity["ssim_drop"] > 0.002 or parity["max_abs_diff"] > 0.02:
        sys.exit("error: fp16 storage changes the outputs beyond budget (SSIM drop 0.002, max |diff| 0.02); ship fp32")
    meta = {
        "stage": "burst",
        "step": info.get("step"),
        "storage": "float16 (loads into float32)",
        "input": "(N, 5, 3, H, W) float32 RGB in [0,1], the reference frame in the middle; H, W multiples of 8",
        "output": "(N, 3, H, W): the transmission (reflection removed) of the middle frame",
        "train_config": info.get("train_config"),
        "data": info.get("data"),
        "git_commit": info.get("git_commit"),
        "metrics": info.get("metrics"),
        "provenance": f"{args.teacher}: the teacher-base of H200 round 1 (tools/gpu_recipe.py), frames only (no privileged inputs), shipped unchanged as {NAME}",
        "fp16_storage_parity": parity,
    }
    if args.scores is not None:
        meta["heldout_synthetic"] = json.loads(args.scores.read_text())
    path = save_checkpoint(half, args.out, **meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix('.json').name}")


def ship_checkpoint(args: argparse.Namespace) -> None:
    """A trained burst-mnv2 as it is (fp32: 2.9 MB), with its training record and the held-out scores."""
    net = load_checkpoint(args.checkpoint)
    info = net.checkpoint_info
    name = info.get("model")
    if name != "burst-mnv2":
        sys.exit(f"error: {args.checkpoint}: expected a burst-mnv2 checkpoint, got '{name}'")
    meta = {
        "stage": "burst",
        "step": info.get("step"),
        "storage": "float32",
        "input": "(N, 5, 3, H, W) float32 RGB in [0,1], every frame registered to the middle one by a global translation "
        "(burst/pipeline.py does it); H, W multiples of 16",
        "output": "(N, 3, H, W): the transmission (reflection removed) of the middle frame",
        "train_config": info.get("train_config"),
        "data": info.get("data"),
        "git_commit": info.get("git_commit"),
        "metrics": info.get("metrics"),
        "provenance": args.provenance or str(args.checkpoint),
    }
    if args.scores is not None:
        meta["heldout_synthetic"] = json.loads(args.scores.read_text())
    out = args.out or ROOT / "dereflect" / "weights" / "burst-mnv2.safetensors"
    path = save_checkpoint(net, out, **meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix('.json').name}")


if __name__ == "__main__":
    main()
