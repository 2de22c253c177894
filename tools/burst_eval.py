"""Burst path vs the single-image students vs identity on held-out synthetic sequences.

Held out: scikit-image's bundled photos, which no shipped model saw in training (the training pool
.data/photos is BSDS500, CBSD68, Kodak24, SUN and VOC photos). Each sequence: 5 frames through
glass from two of them (dereflect/data/synth.py, its default ranges), quantized to 8 bits like a
camera's frames. The burst path is what `dereflect remove --burst` runs (registration, frame
choice, pre-alignment, model, correction at full resolution: here the working resolution is the
frame's); the students see the middle frame through `runtime.load` as `dereflect remove` does.
Two labels: `glass` (the synthesis default, the label keeps the glass' tint, as the teacher was
trained) and `scene` (glass_in_label off, as real ground truth is shot and the students train).

    .venv/bin/python tools/burst_eval.py --count 48 --size 256 --model burst-base --model burst-mnv2 --json docs/burst_eval.json
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

from dereflect import metrics, runtime  # noqa: E402
from dereflect.burst import frames as frames_mod  # noqa: E402
from dereflect.burst import pipeline  # noqa: E402
from dereflect.data.photos import load_photos  # noqa: E402
from dereflect.data.synth import SynthConfig, synthesize_sequence  # noqa: E402


def to_u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def score(gt: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    g, o = gt.astype(np.float64), out.astype(np.float64)
    return metrics.psnr(g, o), metrics.ssim(g, o)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=31337)
    ap.add_argument(
        "--model", action="append", help="burst model (dereflect remove --burst --model); repeat for several (default: the default one)"
    )
    ap.add_argument("--student", action="append", default=[], help="another single-image model to score beside the shipped ones")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    photos = load_photos(None, max_side=512)
    bursts = {name: pipeline.load_model(name) for name in args.model or ["default"]}
    students = {name: runtime.load(name) for name in ("student-nano", "student-mnv2-rt", "student-mnv2-hq", *args.student)}
    default_student = students["student-nano"]  # what the CLI falls back to (runtime.load("default"))
    table: dict[str, dict] = {}
    for label, cfg in (("glass", SynthConfig()), ("scene", SynthConfig(glass_in_label=False))):
        rng = np.random.default_rng(args.seed)
        rows: dict[str, list[tuple[float, float]]] = {"identity": [], **{k: [] for k in students}, **{f"burst {k}": [] for k in bursts}}
        fallbacks, seconds = dict.fromkeys(bursts, 0), {k: [] for k in bursts}
        for i in range(args.count):
            t_idx, r_idx = rng.choice(len(photos), size=2, replace=False)
            seq = synthesize_sequence(photos[t_idx], photos[r_idx], n_frames=5, size=args.size, rng=rng, config=cfg)
            frames = [to_u8(f) for f in seq.frames]
            gt = to_u8(seq.transmission[seq.middle])
            mid = frames[seq.middle]
            rows["identity"].append(score(gt, mid))
            for name, session in students.items():
                rows[name].append(score(gt, session.run(mid)))
            try:  # registration and frame choice once per sequence, shared by every burst model
                burst = frames_mod.from_arrays(frames, [Path(f"seq{i}_f{k}") for k in range(5)], seq.middle)
            except frames_mod.BurstProblem as exc:  # the CLI falls back to the default student: so does the score
                print(f"fallback: {exc}")
                burst, fallback = None, default_student.run(mid)
            for name, model in bursts.items():
                if burst is None:
                    fallbacks[name] += 1
                    out = fallback
                else:
                    started = time.perf_counter()
                    out = pipeline.remove(burst, model).clean
                    seconds[name].append(time.perf_counter() - started)
                rows[f"burst {name}"].append(score(gt, out))
        table[label] = {
            name: {"psnr": round(float(np.mean([r[0] for r in v])), 3), "ssim": round(float(np.mean([r[1] for r in v])), 4)}
            for name, v in rows.items()
        }
        for name in bursts:
            table[label][f"burst {name}"]["fallbacks"] = fallbacks[name]
            table[label][f"burst {name}"]["median_s"] = round(float(np.median(seconds[name])), 3) if seconds[name] else None
        print(label, json.dumps(table[label]))
    result = {
        "sequences": f"{args.count} x 5 frames at {args.size} px from scikit-image's photos (held out of every shipped model's training), seed {args.seed}",
        "burst_models": {name: model.label for name, model in bursts.items()},
        "default_student": "student-nano",
        "labels": {
            "glass": "label keeps the glass tint (synthesis default, teacher's training)",
            "scene": "label without the glass (as real ground truth; students' training)",
        },
        **table,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
