"""Build the bank of real reflection layers from saggy361's TRAINING scenes.

Only scene_split(names, 0.1, seed=0)'s training side is read (the 11 val scenes select models;
the dev sets real_pairs_locationaware and real_flash_demo are never touched). Pairs whose ground
truth is shifted more than --max-shift px (metrics.gt_shift) are skipped; each kept pair's
reflection is cut out by real_reflections.extract_reflection (T shifted onto the photo, gain
fitted, T's leaked structure removed) and rejected if its leak score stays above --max-leak.
Writes BANK/layers/NAME.png (16-bit, linear light) and BANK/bank.json (per layer: source,
scene, shift, gain, leak before/after; and the leak summary), outside the repository's tracked
files by default (.data/ is git-ignored).

    .venv/bin/python tools/build_reflection_bank.py --shared /work/shared/data --out .data/reflections
    .venv/bin/python tools/build_reflection_bank.py --out .data/reflections --preview docs/real_reflections_preview.jpg \
        --photos /work/shared/data/kodak24     # only the sheet, from the bank already built
    .venv/bin/python tools/build_reflection_bank.py --shared /work/shared/data --out .data/reflections --measure 40
                                               # leak of N sampled layers: naive vs kept vs an unrelated T
    .venv/bin/python tools/build_reflection_bank.py --repack .data/reflections --side 160 --per-scene 4 --out .data/reflections_small
                                               # a copy small enough to carry (~40 MB): fewer, smaller layers
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

from dereflect.data import real_reflections as rr  # noqa: E402
from dereflect.data.datasets import scene_of  # noqa: E402
from dereflect.files import write_bytes_atomic  # noqa: E402
from dereflect.images import read_rgb, write_image  # noqa: E402
from dereflect.metrics import ALIGNED_MAX_SHIFT, gt_shift  # noqa: E402


def chance_leak(layers: list[tuple[str, np.ndarray]], pairs: dict[str, Path], k: int = 40) -> float:
    """Leak score of layers against ANOTHER scene's T: what an independent reflection scores."""
    scores = []
    for name, r in layers[:: max(1, len(layers) // k)]:
        other = next((n for n, _ in layers[::-1] if scene_of(n) != scene_of(name)), None)
        if other is None:
            continue
        t = rr.srgb_to_linear(read_rgb(pairs[other]) / 255.0)
        if t.shape == r.shape:
            scores.append(rr.leak_score(r, t))
    return float(np.mean(scores)) if scores else float("nan")


def measure(bank_dir: Path, shared: Path, k: int = 40, seed: int = 0) -> dict[str, float]:
    """Both leak measures on k sampled bank layers: the naive cut-out (blended - g*T, no
    suppression) and the kept layer against their own T, and the kept layer against another
    scene's T (what no leak at all scores)."""
    bank = rr.ReflectionBank(bank_dir)
    root = shared / "real_pairs_saggy361"
    pick = np.random.default_rng(seed).choice(len(bank), size=min(k, len(bank)), replace=False)
    rows = []
    for j, i in enumerate(pick):
        entry = bank.layers[int(i)][1]
        name = entry["file"].rsplit(".", 1)[0]
        blended, trans = read_rgb(root / "blended" / f"{name}.jpeg"), read_rgb(root / "transmission" / f"{name}.jpeg")
        naive = rr.extract_reflection(blended, trans, suppress=False).reflection
        kept = bank.layer(int(i))
        t_own = rr.srgb_to_linear(trans / 255.0)
        other = next(bank.layers[int(o)][1] for o in np.roll(pick, -(j + 1)) if bank.layers[int(o)][1]["scene"] != entry["scene"])
        t_other = rr.srgb_to_linear(read_rgb(root / "transmission" / other["source"].rsplit("/", 1)[1]) / 255.0)
        rows.append(
            [f(r, t) for f in (rr.leak_score, rr.gradient_correlation) for r, t in ((naive, t_own), (kept, t_own), (kept, t_other))]
        )
    names = [f"{m}_{w}" for m in ("edge_share", "grad_corr") for w in ("naive", "kept", "unrelated_T")]
    result = {n: round(float(v), 4) for n, v in zip(names, np.mean(rows, axis=0))}
    print(json.dumps({"layers": len(rows), **result}, indent=1))
    return result


def repack(src: Path, out: Path, side: int, per_scene: int) -> None:
    """Copy a bank with its layers' short side shrunk to `side` px and at most `per_scene` layers
    of each background (in the source's order, which is round-robin over scenes)."""
    bank = rr.ReflectionBank(src)
    (out / rr.LAYER_DIR).mkdir(parents=True, exist_ok=True)
    count: dict[str, int] = {}
    entries = []
    for i, (_, entry) in enumerate(bank.layers):
        count[entry["scene"]] = count.get(entry["scene"], 0) + 1
        if per_scene and count[entry["scene"]] > per_scene:
            continue
        r = bank.layer(i)
        scale = side / min(r.shape[:2]) if side else 1.0
        if scale < 1.0:
            r = rr._resize(r, round(r.shape[0] * scale), round(r.shape[1] * scale))
        write_image(out / rr.LAYER_DIR / entry["file"], np.clip(r, 0.0, 1.0).astype(np.float32), bit_depth=16)
        entries.append(entry)
    meta = json.loads((src / rr.BANK_INDEX).read_text())
    write_index(
        out, entries, {**meta.get("summary", {}), "repacked_from": str(src), "side": side, "per_scene": per_scene, "kept": len(entries)}
    )
    size = sum(f.stat().st_size for f in (out / rr.LAYER_DIR).iterdir()) / 2**20
    print(f"{len(entries)} layers, {size:.1f} MiB in {out}")


def preview(bank_dir: Path, photo_dir: Path, out: Path, size: int = 160, seed: int = 0) -> None:
    """A sheet for a person to judge the bank: a row of layers as they add light (R in sRGB over
    black, no gain), then rows of composites (photo through glass with a real reflection) each
    beside its clean transmission label."""
    from PIL import Image, ImageDraw

    from dereflect.data.photos import load_photos

    bank = rr.ReflectionBank(bank_dir)
    photos = load_photos(photo_dir, max_side=400)
    rng = np.random.default_rng(seed)
    cols, gap = 6, 4
    picks = rng.choice(len(bank), size=cols, replace=False)
    tiles = [[rr.linear_to_srgb(rr._resize(bank.layer(int(i)), size, size)) for i in picks]]
    comp = rr.CompositePairs(photos, bank, size=size, length=10_000, seed=seed)
    for row in range(3):
        line = []
        for k in range(cols // 2):
            item = comp[row * 7 + k * 3 + 1]
            line += [item["input"].permute(1, 2, 0).numpy(), item["transmission"].permute(1, 2, 0).numpy()]
        tiles.append(line)
    head = 14
    sheet = np.full((len(tiles) * (size + gap + head), cols * (size + gap), 3), 255, np.uint8)
    for r, line in enumerate(tiles):
        for c, tile in enumerate(line):
            y, x = r * (size + gap + head) + head, c * (size + gap)
            sheet[y : y + size, x : x + size] = np.round(np.clip(tile, 0, 1) * 255).astype(np.uint8)
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    for r in range(len(tiles)):
        for c in range(cols):
            label = f"R {bank.layers[int(picks[c])][1]['file'][:-4]}" if r == 0 else ("composite" if c % 2 == 0 else "clean T (label)")
            draw.text((c * (size + gap) + 2, r * (size + gap + head) + 1), label, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, quality=85)
    print(f"{out}: {out.stat().st_size // 1024} KiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / ".data" / "reflections")
    ap.add_argument("--max-shift", type=float, default=ALIGNED_MAX_SHIFT, help="px; metrics.ALIGNED_MAX_SHIFT by default")
    ap.add_argument("--max-leak", type=float, default=rr.MAX_LEAK)
    ap.add_argument("--min-mean", type=float, default=0.002, help="skip layers with (almost) no reflection (mean linear R)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N training pairs (a quick look)")
    ap.add_argument("--preview", type=Path, help="write a preview sheet of the bank at --out (no build)")
    ap.add_argument("--photos", type=Path, help="transmission photos for the preview's composites")
    ap.add_argument("--measure", type=int, default=0, help="measure the leak on N layers of the bank at --out (no build)")
    ap.add_argument("--repack", type=Path, help="copy this bank to --out, smaller (--side, --per-scene); no build")
    ap.add_argument("--side", type=int, default=0, help="--repack: short side of the copied layers (0: as they are)")
    ap.add_argument("--per-scene", type=int, default=0, help="--repack: at most this many layers per background (0: all)")
    args = ap.parse_args()
    if args.repack:
        repack(args.repack, args.out, args.side, args.per_scene)
        return
    if args.measure:
        measure(args.out, args.shared, args.measure)
        return
    if args.preview:
        preview(args.out, args.photos or args.shared / "kodak24", args.preview)
        return
    pairs = round_robin(rr.saggy_training_pairs(args.shared))[: args.limit or None]
    (args.out / rr.LAYER_DIR).mkdir(parents=True, exist_ok=True)
    entries, skipped, kept = [], {"shift": 0, "empty": 0, "leak": 0}, []
    t0 = time.time()
    for i, (name, bpath, tpath) in enumerate(pairs):
        blended, trans = read_rgb(bpath), read_rgb(tpath)
        shift = gt_shift(trans, blended)
        if shift > args.max_shift:
            skipped["shift"] += 1
            continue
        layer = rr.extract_reflection(blended, trans)
        info = {
            "file": f"{name}.png",
            "source": f"real_pairs_saggy361/{bpath.name}",
            "scene": scene_of(name),
            "gt_shift": round(shift, 3),
            **layer.info,
        }
        if info["mean_r"] < args.min_mean:
            skipped["empty"] += 1
            continue
        if info["leak"] > args.max_leak:
            skipped["leak"] += 1
            continue
        write_image(args.out / rr.LAYER_DIR / info["file"], np.clip(layer.reflection, 0.0, 1.0).astype(np.float32), bit_depth=16)
        entries.append(info)
        if len(entries) % 20 == 1:  # a sample for the chance level (all of them would be GBs)
            kept.append((name, layer.reflection))
        if len(entries) % 50 == 0:  # an interrupted build still leaves a usable bank
            write_index(args.out, entries, {"partial": True, "pairs_read": i + 1})
        if len(entries) % 50 == 0:
            print(
                f"{i}/{len(pairs)} {name}: shift {shift:.2f} gain {info['gain']} leak {info['leak_naive']} -> {info['leak']}"
                f" ({time.time() - t0:.0f} s)",
                flush=True,
            )
    summary = {
        "pairs_read": len(pairs),
        "kept": len(entries),
        "skipped": skipped,
        "leak_naive_mean": round(float(np.mean([e["leak_naive"] for e in entries])), 4),
        "leak_mean": round(float(np.mean([e["leak"] for e in entries])), 4),
        "leak_chance": round(chance_leak(kept, {n: t for n, _, t in pairs}), 4),
        "max_shift": args.max_shift,
        "max_leak": args.max_leak,
        "scenes": len({e["scene"] for e in entries}),
    }
    write_index(args.out, entries, summary)
    print(json.dumps(summary, indent=1))


def write_index(out: Path, entries: list[dict], summary: dict) -> None:
    index = {
        "format": rr.BANK_FORMAT,
        "version": 1,
        "encoding": "16-bit PNG, linear-light R (not sRGB), [0, 1]",
        "made_by": "tools/build_reflection_bank.py",
        "summary": summary,
        "layers": entries,
    }
    write_bytes_atomic(out / rr.BANK_INDEX, json.dumps(index, indent=1).encode())


def round_robin(pairs: list[tuple[str, Path, Path]]) -> list[tuple[str, Path, Path]]:
    """Every scene's first shot, then every scene's second, ...: a partial build (--limit, or
    one stopped early) covers all backgrounds' reflections evenly."""
    rank: dict[str, int] = {}
    keyed = []
    for n, b, t in pairs:
        rank[scene_of(n)] = rank.get(scene_of(n), -1) + 1
        keyed.append((rank[scene_of(n)], len(keyed), (n, b, t)))
    return [p for _, _, p in sorted(keyed)]


if __name__ == "__main__":
    main()
