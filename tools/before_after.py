"""Before/after sheet of students on real photos: the real45 photos (no ground truth) and the dev pairs.

Why: numbers alone reward darkening, blurring or re-colouring that a ground truth does not show; a
person must see the outputs. Each row: the photo, then each model's output, then (dev pairs) the
ground truth, then |photo - output| x4 of the last model (what it removed: a reflection should
show there, not the scene's edges). Thumbnails at --height px, one JPEG.

    .venv/bin/python tools/before_after.py dereflect/weights/student-nano.safetensors runs/x/best.safetensors \\
        --shared ../shared/data --out docs/before_after.jpg [--real45 12] [--height 160]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.images import from_float, read_rgb  # noqa: E402
from dereflect.models import load_checkpoint  # noqa: E402
from dereflect.models.blocks import pad_to_multiple  # noqa: E402
from tools.eval_dev import dev_pairs  # noqa: E402


def predictor(path: Path):
    model = load_checkpoint(path, expect="student")

    def run(img: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
        x, (h, w) = pad_to_multiple(x, model.size_multiple)
        with torch.no_grad():
            y = model(x)[0, :, :h, :w]
        return from_float(y.permute(1, 2, 0).numpy())

    return run


def thumb(img: np.ndarray, height: int, label: str = "") -> Image.Image:
    im = Image.fromarray(img)
    im = im.resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS)
    if label:
        ImageDraw.Draw(im).text((3, 2), label, fill=(255, 255, 0))
    return im


def rows_for(shared: Path, n_real45: int) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    rows = []
    for name, photo, target in dev_pairs(shared):
        rows.append((name, read_rgb(photo), read_rgb(target)))
    real45 = sorted(p for p in (shared / "real45_ceilnet").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    for p in real45[:n_real45]:
        rows.append((f"real45/{p.stem}", read_rgb(p), None))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--real45", type=int, default=45, help="how many real45 photos (all 45 by default)")
    ap.add_argument("--height", type=int, default=160)
    args = ap.parse_args()
    runs = [(p.parent.name if p.stem in ("best", "last") else p.stem, predictor(p)) for p in args.models]
    lines = []
    for name, photo, target in rows_for(args.shared, args.real45):
        outs = [run(photo) for _, run in runs]
        diff = np.clip(np.abs(photo.astype(np.int16) - outs[-1].astype(np.int16)) * 4, 0, 255).astype(np.uint8)
        tiles = [thumb(photo, args.height, name)]
        tiles += [thumb(o, args.height, label) for o, (label, _) in zip(outs, runs)]
        tiles += [thumb(target, args.height, "ground truth")] if target is not None else []
        tiles += [thumb(diff, args.height, f"|photo-{runs[-1][0]}| x4")]
        lines.append(tiles)
    width = max(sum(t.width for t in tiles) + 4 * len(tiles) for tiles in lines)
    sheet = Image.new("RGB", (width, len(lines) * (args.height + 4)), (24, 24, 24))
    for r, tiles in enumerate(lines):
        x = 0
        for t in tiles:
            sheet.paste(t, (x, r * (args.height + 4)))
            x += t.width + 4
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=85)
    print(f"{args.out}: {len(lines)} rows, {sheet.width}x{sheet.height}")


if __name__ == "__main__":
    main()
