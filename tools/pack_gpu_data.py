"""Pack downscaled training data into an ignored folder that the lent GPU machine can carry.

The device machine receives only the repository (64 MiB with what it carries), not ../shared/data.
This writes `.data/` (git-ignored): synthesis photos (long side <= --photo-side, JPEG), the
saggy361 real pairs split BY SCENE into train/ and val/ (never the same background in both), and
HED's VGG16 weights as float16 HDF5 (half the size; the loader reads them back as float32), and
torchvision's ImageNet MobileNetV2 file (14 MB, copied byte for byte: its sha256 is checked on load)
for the MobileNetV2 students and the privileged teacher.

    .venv/bin/python tools/pack_gpu_data.py --shared ../shared/data --out .data
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from dereflect.data.datasets import scene_split
from dereflect.models.backbones import mobilenet_v2_weights_path
from dereflect.models.vgg import hed_weights_path

PHOTO_FOLDERS = ["voc2012_ceilnet100", "cbsd68", "bsds500_400", "sun_hays80", "kodak24"]


def save_small(src: Path, dst: Path, max_side: int, quality: int) -> None:
    img = Image.open(src).convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, quality=quality)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path(".data"))
    ap.add_argument("--photo-side", type=int, default=320)
    ap.add_argument("--pair-side", type=int, default=256)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--shots-per-scene", type=int, default=5, help="cap on training pairs per background (they repeat)")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    n = 0
    for folder in PHOTO_FOLDERS:
        for src in sorted((args.shared / folder).iterdir()):
            if src.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"):
                save_small(src, args.out / "photos" / f"{folder}_{src.stem}.jpg", args.photo_side, args.quality)
                n += 1
    pairs = args.shared / "real_pairs_saggy361"
    names = sorted(p.stem for p in (pairs / "blended").iterdir())
    train, val = scene_split(names, args.val_fraction, seed=0)
    per_scene: dict[str, int] = {}
    capped = []
    for name in train:
        scene = name.split("-", 1)[0]
        per_scene[scene] = per_scene.get(scene, 0) + 1
        if per_scene[scene] <= args.shots_per_scene:
            capped.append(name)
    train = capped
    for split, chosen in (("pairs_train", train), ("pairs_val", val)):
        for name in chosen:
            for sub in ("blended", "transmission"):
                src = next((pairs / sub).glob(f"{name}.*"))
                save_small(src, args.out / split / sub / f"{name}.jpg", args.pair_side, args.quality)
    hed = hed_weights_path()
    if hed is not None:
        with h5py.File(hed, "r") as fin, h5py.File(args.out / "hed_fp16.weights.h5", "w") as fout:

            def copy(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset):
                    fout.create_dataset(name, data=np.asarray(obj[()], dtype=np.float16))
                else:
                    grp = fout.require_group(name)
                    for k, v in obj.attrs.items():
                        grp.attrs[k] = v

            fin.visititems(copy)
    mnv2 = mobilenet_v2_weights_path()
    if mnv2 is not None:
        shutil.copy2(mnv2, args.out / mnv2.name)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 2**20
    print(
        f"{n} photos, {len(train)} train / {len(val)} val pairs ({len(set(x.split('-')[0] for x in val))} val scenes); {size:.1f} MiB in {args.out}"
    )


if __name__ == "__main__":
    main()
