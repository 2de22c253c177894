"""Equal-sample ablation from one committed training state (issue 13, item 7).

Why: on a 2-core CPU an ablation from scratch costs hours per arm. Resuming every arm from the same
committed state (`tools/carry_run.py` folder) and stopping all of them at the same step compares the
levers at equal samples from an equal start: each arm sees the same number of batches after the
fork and differs only in its config (and the extra --data it names). The schedule (cosine over the
config's `steps`) is shared, so the learning rate is the same at every step in every arm.

Each arm runs `dereflect train student ... --resume` in its own folder with one torch thread (arms run
side by side, or --jobs at a time), and is stopped once its checkpoint reaches --until-step (validation
runs before the checkpoint at the same step, so the row is in val.csv). The end prints each arm's
saggy-val rows. Without --state the arms start from scratch (each from its config's own init, e.g. the
ImageNet encoder or a random one); an arm folder that already holds a checkpoint is resumed either way.

    .venv/bin/python tools/ablate_from_state.py --state results/cpu-mnv2-hq --until-step 4000 \\
        --arm control=configs/student-mnv2-hq-cpu.yaml \\
        --arm composite=configs/student-mnv2-hq-cpu-composite.yaml:.data/reflections_small
    .venv/bin/python tools/ablate_from_state.py --until-step 1200 --jobs 1 --out runs/ablate-rt \\
        --arm control=configs/student-mnv2-rt-cpu.yaml --arm random=configs/student-mnv2-rt-cpu-random.yaml
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_arm(text: str) -> tuple[str, Path, list[Path]]:
    """`name=config.yaml[:extra_data[:more]]` -> (name, config, extra --data folders)."""
    name, _, rest = text.partition("=")
    if not name or not rest:
        raise SystemExit(f"--arm {text!r}: expected NAME=CONFIG[:EXTRA_DATA...]")
    config, *extra = rest.split(":")
    return name, Path(config), [Path(e) for e in extra]


def checkpoint_step(run: Path) -> int:
    try:
        return int(json.loads((run / "last.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", type=Path, help="a tools/carry_run.py folder (results/...); omit to start every arm from scratch")
    ap.add_argument("--until-step", type=int, required=True)
    ap.add_argument("--arm", action="append", required=True, help="NAME=CONFIG[:EXTRA_DATA...]")
    ap.add_argument("--out", type=Path, default=Path("runs/ablate"))
    ap.add_argument("--jobs", type=int, default=0, help="arms running at once (default: all)")
    ap.add_argument("--teacher", type=Path, default=Path("results/h200-round1/teacher/best.safetensors"))
    ap.add_argument("--data", type=Path, action="append", default=None, help="default: .data/photos and .data/pairs_train")
    ap.add_argument("--val-pairs", type=Path, default=Path(".data/pairs_val"))
    args = ap.parse_args()
    data = args.data or [Path(".data/photos"), Path(".data/pairs_train")]
    arms = [parse_arm(a) for a in args.arm]
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args.out.mkdir(parents=True, exist_ok=True)

    def start(name: str, config: Path, extra: list[Path]) -> None:
        run = args.out / name
        if args.state is not None and not run.exists():
            subprocess.run([sys.executable, str(ROOT / "tools/carry_run.py"), "unpack", str(args.state), str(run)], check=True)
        cmd = [sys.executable, "-m", "dereflect", "train", "student", "--config", str(config), "--teacher", str(args.teacher)]
        for folder in [*data, *extra]:
            cmd += ["--data", str(folder)]
        cmd += ["--val-pairs", str(args.val_pairs), "--out", str(run), "--device", "cpu"]
        if checkpoint_step(run) >= 0:
            cmd.append("--resume")
        log = open(args.out / f"{name}.log", "a")  # noqa: SIM115 - lives as long as the child
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), run)
        print(f"{name}: started at step {checkpoint_step(run)} ({config}{' + ' + ', '.join(map(str, extra)) if extra else ''})", flush=True)

    waiting = list(arms)
    t0 = time.time()
    while waiting or procs:
        while waiting and (args.jobs <= 0 or len(procs) < args.jobs):
            start(*waiting.pop(0))
        time.sleep(5)
        for name, (proc, run) in list(procs.items()):
            if checkpoint_step(run) >= args.until_step and proc.poll() is None:
                # SIGTERM, not SIGINT: a job started in the background of a non-interactive shell ignores
                # SIGINT (so Python never raises KeyboardInterrupt). Safe: the checkpoint is on disk.
                proc.terminate()
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.poll() is not None:
                print(
                    f"{name}: stopped at checkpoint step {checkpoint_step(run)} after {time.time() - t0:.0f} s (exit {proc.returncode})",
                    flush=True,
                )
                del procs[name]
    for name, _, _ in arms:
        with open(args.out / name / "val.csv") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) > 0]
        tail = [f"{r['step']}: {float(r['selection_ssim']):.4f}" for r in rows[-4:]]
        print(f"{name}: saggy-val SSIM {', '.join(tail)}")


if __name__ == "__main__":
    main()
