"""Teachers on held-out data: synthetic sequences, and saggy-val's real photos as static sequences.

Issue 13, item 3: a teacher with privileged inputs must beat the current one by >= 1.5 dB on held-out
synthetic sequences (the teacher is the ceiling of what KT passes on), and beat the photo itself on
saggy-val when fed one real photo as a static 5-frame sequence (no motion: only what it knows of a
single view). The synthetic set is `tools/gpu_recipe.py compare`'s (128 sequences of the trainers'
held-out photos at 192 px, seed 20000), so the figures line up with results/README.md's tables; the
real set is the students' selection set (saggy361's 93 held-out pairs, scored as in validation).

    .venv/bin/python tools/teacher_eval.py results/h200-round1/teacher/best.safetensors \\
        runs/teacher-priv/best.safetensors --data .data --out results/cpu-teacher-priv/teacher_eval.json
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

from dereflect.data.datasets import PairedFolder, SyntheticSequences  # noqa: E402
from dereflect.models import load_checkpoint  # noqa: E402
from dereflect.models.blocks import pad_to_multiple  # noqa: E402
from dereflect.train.scoring import score_batch  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from gpu_recipe import held_out_sequences  # noqa: E402  (the same set as `gpu_recipe.py compare`)


def _mean(rows: dict[str, list[float]]) -> dict[str, float]:
    return {k: round(float(np.mean(v)), 5) for k, v in rows.items()}


def evaluate(teacher: torch.nn.Module, synthetic: SyntheticSequences, pairs: PairedFolder | None, frames: int) -> dict:
    """{"synthetic": {psnr, ssim, lmse, id_*}, "saggy_val_static": {...}} for one teacher."""
    out: dict[str, dict[str, float]] = {}
    rows: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(len(synthetic)):
            item = synthetic[i]
            pred = teacher(item["frames"][None])["transmission"].float()
            for k, v in score_batch(pred, item["transmission"][None], item["input"][None]).items():
                rows.setdefault(k, []).extend(v)
        out["synthetic"] = _mean(rows)
        if pairs is not None:
            rows = {}
            for i in range(len(pairs)):
                item = pairs[i]
                x, (h, w) = pad_to_multiple(item["input"][None], teacher.size_multiple)
                static = x[:, None].expand(-1, frames, -1, -1, -1)
                pred = teacher(static)["transmission"].float()[..., :h, :w]
                for k, v in score_batch(pred, item["transmission"][None], item["input"][None]).items():
                    rows.setdefault(k, []).extend(v)
            out["saggy_val_static"] = _mean(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teachers", nargs="+", type=Path, help="teacher checkpoints (.safetensors)")
    ap.add_argument("--data", type=Path, default=ROOT / ".data", help="holds photos/ and pairs_val/ (tools/pack_gpu_data.py)")
    ap.add_argument("--count", type=int, default=128, help="held-out synthetic sequences")
    ap.add_argument("--out", type=Path, help="write the table here as JSON")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    synthetic = held_out_sequences(args.data / "photos", 192, args.count)
    pairs = PairedFolder(args.data / "pairs_val", size=None) if (args.data / "pairs_val").is_dir() else None
    table = {}
    for path in args.teachers:
        teacher = load_checkpoint(path, expect="teacher").eval()
        table[str(path)] = evaluate(teacher, synthetic, pairs, teacher.config.n_frames)
        print(json.dumps({str(path): table[str(path)]}), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
