"""Before/after sheet of the burst path on real multi-frame sequences (no ground truth).

Rows: the real sequences shot through glass in ../shared/data/real_multiframe_liu2020 (the 3 PNG
5-frame sequences, then the 25 MP4 clips), each run exactly as `dereflect remove --burst` runs it
(registration, frame choice, fallback). Columns: the reference (middle) frame, the default
single-image student on it, the burst output, then what each removed (|input - output| x 4).
A row whose frames do not register is labelled FALLBACK (its burst column is the student's).

    .venv/bin/python tools/burst_sheet.py --shared ../shared/data --out docs/burst_real_sequences.jpg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect import runtime  # noqa: E402
from dereflect.burst import frames as frames_mod  # noqa: E402
from dereflect.burst import pipeline  # noqa: E402


def sequences(shared: Path) -> list[tuple[str, list[Path]]]:
    root = shared / "real_multiframe_liu2020"
    out = []
    stems = sorted({p.name.split("_I")[0] for p in (root / "frames_5").glob("*_I*.png")})
    for stem in stems:
        out.append((f"frames_5/{stem}", sorted((root / "frames_5").glob(f"{stem}_I*.png"))))
    for clip in sorted((root / "videos").glob("*/*.mp4")):
        out.append((f"{clip.parent.name}/{clip.stem}", [clip]))
    return out


def thumb(img: np.ndarray, height: int, label: str = "") -> Image.Image:
    im = Image.fromarray(img)
    im = im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)
    if label:
        draw = ImageDraw.Draw(im)
        draw.rectangle((0, 0, 7 * len(label) + 6, 13), fill=(0, 0, 0))
        draw.text((3, 1), label, fill=(255, 255, 0))
    return im


def removed(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.clip(np.abs(src.astype(np.int16) - out.astype(np.int16)) * 4, 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--height", type=int, default=150)
    ap.add_argument("--json", type=Path, help="per-sequence record (picks, fallback, mean |change|)")
    ap.add_argument("--model", default="default", help="burst model (dereflect remove --burst --model)")
    ap.add_argument("--student", default="default", help="single-image model for the student column")
    args = ap.parse_args()
    student = runtime.load(args.student)
    model = pipeline.load_model(args.model)
    burst_label = "burst" if args.model == "default" else f"burst {Path(args.model).stem}"
    rows, record = [], []
    for name, paths in sequences(args.shared):
        try:
            burst = frames_mod.load_burst(paths)
            ref = burst.reference
            burst_out = pipeline.remove(burst, model).clean
            fell_back, picks = None, burst.describe()
        except frames_mod.BurstProblem as exc:
            from dereflect.burst.cli import _fallback_frame

            ref, _, _ = _fallback_frame(paths, exc)
            burst_out, fell_back, picks = None, str(exc), ""
        clean = student.run(ref)
        if burst_out is None:
            burst_out = clean
        h = args.height
        tiles = [
            thumb(ref, h, name),
            thumb(clean, h, "student"),
            thumb(burst_out, h, "FALLBACK (student)" if fell_back else burst_label),
            thumb(removed(ref, clean), h, "student removed x4"),
            thumb(removed(ref, burst_out), h, "burst removed x4"),
        ]
        width = sum(t.width for t in tiles) + 4 * (len(tiles) - 1)
        row = Image.new("RGB", (width, h), (255, 255, 255))
        x = 0
        for t in tiles:
            row.paste(t, (x, 0))
            x += t.width + 4
        rows.append(row)
        change = lambda out, ref=ref: float(np.abs(ref.astype(np.int16) - out.astype(np.int16)).mean())  # noqa: E731
        record.append(
            {
                "sequence": name,
                "picks": picks,
                "fallback": fell_back,
                "student_mean_change": change(clean),
                "burst_mean_change": change(burst_out),
            }
        )
        print(json.dumps(record[-1]), flush=True)
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height + 4 for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=82)
    print(f"{args.out}: {len(rows)} sequences, {sum(1 for r in record if r['fallback'])} fallback(s)")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
