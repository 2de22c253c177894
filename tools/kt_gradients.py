"""How much of a student's update comes from each loss term: gradient norms per term (loss balance).

For a few synthetic batches (the only ones where KT acts) this computes, for every term of the
student loss (weighted as in the config), the norm of its gradient with respect to the student's
own weights (the shipped network, not the trainer-owned KT projections), and the norm of the sum.
Why: the trainer clips the total gradient norm (`grad_clip`), so a term whose gradient is much
larger than the others sets the direction of every synthetic step and, through the clip, shrinks
the others' share — the reconstruction loss that the dev metrics measure.

    .venv/bin/python tools/kt_gradients.py configs/student-cpu-continue.yaml --teacher results/h200-round1/teacher/best.safetensors \\
        --init results/h200-round1/student-nano/best.safetensors --batches 4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.train.config import load_config  # noqa: E402
from dereflect.train.student import StudentTrainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--init", type=Path, help="student weights to measure at (default: the config's init)")
    ap.add_argument("--data", type=Path, default=ROOT / ".data")
    ap.add_argument("--batches", type=int, default=4)
    args = ap.parse_args()
    if (args.data / "hed_fp16.weights.h5").is_file():
        os.environ.setdefault("DEREFLECT_HED_WEIGHTS", str(args.data / "hed_fp16.weights.h5"))
    cfg = load_config("student", args.config, {"init": str(args.init) if args.init else None, "gan": "off"})
    with tempfile.TemporaryDirectory() as run:
        tr = StudentTrainer(
            cfg, Path(run), teacher=args.teacher, data_dirs=[args.data / "photos", args.data / "pairs_train"], device="cpu", progress=False
        )
    params = [p for p in tr._model.parameters() if p.requires_grad]
    norms: dict[str, list[float]] = {}
    step, done = 0, 0
    while done < args.batches:
        if tr.dataset.source(step) != "synthetic":
            step += 1
            continue
        items = [tr.dataset[step * cfg.batch + k] for k in range(cfg.batch)]
        batch = {k: torch.stack([it[k] for it in items]) for k in ("input", "transmission", "frames")}
        terms, _ = tr.loss_terms(batch)
        terms = {k: tr.loss_weights[k] * v for k, v in terms.items()}
        terms["total"] = sum(terms.values())
        for name, value in terms.items():
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
            norms.setdefault(name, []).append(float(norm))
            norms.setdefault(f"{name} (value)", []).append(float(value.detach()))
        step, done = step + 1, done + 1
    for name, values in norms.items():
        print(f"{name:14s} {np.mean(values):.4f}  (per batch: {', '.join(f'{v:.4f}' for v in values)})")
    print(f"grad_clip {cfg.grad_clip}: {'the total is clipped' if np.mean(norms['total']) > cfg.grad_clip else 'no clipping'}")


if __name__ == "__main__":
    main()
