"""Picture of the teacher (and the shipped student) on real multi-frame sequences (no ground truth).

Rows: real 5-frame sequences shot through glass (../shared/data/real_multiframe_liu2020);
columns: first frame, middle frame, teacher T, teacher R (x2 gain), student T (middle frame only).

    .venv/bin/python tools/teacher_on_real.py --teacher results/h200-round1/teacher/best.safetensors --out docs/teacher_real_sequences.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.data.datasets import SequenceFolder  # noqa: E402
from dereflect.images import from_float  # noqa: E402
from dereflect.models import load_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--student", type=Path, default=ROOT / "dereflect/weights/student-nano.safetensors")
    ap.add_argument("--sequences", type=Path, default=ROOT.parent / "shared/data/real_multiframe_liu2020/frames_5")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    teacher = load_checkpoint(args.teacher, expect="teacher")
    student = load_checkpoint(args.student, expect="student")
    seqs = SequenceFolder(args.sequences, size=args.size)
    picks = np.unique(np.linspace(0, len(seqs) - 1, min(args.count, len(seqs))).round().astype(int))
    to_img = lambda t: from_float(t.permute(1, 2, 0).numpy())
    rows = []
    with torch.no_grad():
        for i in picks:
            frames = seqs[int(i)]["frames"][None]
            out = teacher(frames)
            mid = frames[0, frames.shape[1] // 2]
            s = student(mid[None])[0]
            rows.append(
                np.concatenate(
                    [to_img(frames[0, 0]), to_img(mid), to_img(out["transmission"][0]), to_img(out["reflection"][0] * 2), to_img(s)], 1
                )
            )
    sheet = np.concatenate(rows, 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out, quality=85)
    print(f"{args.out}: {len(rows)} sequences ({', '.join(seqs.names[int(i)] for i in picks)})")


if __name__ == "__main__":
    main()
