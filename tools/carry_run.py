"""Carry a training run across machines and sessions through the repository, and keep the ledger.

Why: training here happens in pieces (a CPU session's background run, a 10-minute GPU window), and
each machine starts bare. A run folder's `state.pt` holds everything `--resume` needs, but it is one
pickle-free torch file larger than the repository's 10 MB per-file rule once Adam's two moments sit
beside the weights. `pack` splits it into safetensors shards (< 9 MB each) + a JSON skeleton under
results/, with the run's checkpoints and logs; `unpack` rebuilds a bit-identical state.pt, so
`dereflect train ... --resume` continues exactly where the last machine stopped. Every `pack`
appends one row to results/ledger.csv: the steps, samples and wall time this piece added, per model,
so cumulative training is a sum over rows.

    .venv/bin/python tools/carry_run.py pack runs/mnv2-hq results/cpu-mnv2-hq --machine "2-core AMD EPYC CPU" --wall-s 7200
    .venv/bin/python tools/carry_run.py unpack results/cpu-mnv2-hq runs/mnv2-hq
    .venv/bin/python tools/carry_run.py ledger            # cumulative steps / samples / hours per model
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
LEDGER = ROOT / "results" / "ledger.csv"
LEDGER_FIELDS = [
    "date",
    "run",
    "model",
    "machine",
    "step_from",
    "step_to",
    "batch",
    "size",
    "samples",
    "wall_s",
    "best_selection_ssim",
    "git_commit",
    "note",
]
SHARD_BYTES = 9 * 2**20
COPIED = ("best.safetensors", "best.json", "last.json", "config.json", "train.csv", "val.csv")  # last weights live in the state


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """A JSON skeleton of a nested state (dicts keep int keys, tuples stay tuples); tensors go to `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [flatten(v, tensors, prefix) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot carry a {type(obj).__name__} in a training state")


def unflatten(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__dict__" in skel:
            return {k: unflatten(v, tensors) for k, v in skel["__dict__"]}
        if "__tuple__" in skel:
            return tuple(unflatten(v, tensors) for v in skel["__tuple__"])
        if "__list__" in skel:
            return [unflatten(v, tensors) for v in skel["__list__"]]
    return skel


def write_shards(tensors: dict[str, torch.Tensor], folder: Path) -> list[str]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    names = []
    for i, shard in enumerate(shards):
        name = f"state-{i:02d}.safetensors"
        save_file(shard, str(folder / name))
        names.append(name)
    return names


def pack(run: Path, dest: Path, machine: str, wall_s: float | None, note: str, keep: str = "state") -> None:
    """keep: "state" (resumable: optimiser state sharded + best weights + logs), "weights" (best weights +
    logs: a finished run, e.g. a CPU fine-tune whose 27 MB state would only bloat the repository) or
    "logs" (an ablation arm: its figures are in the logs and results/README.md)."""
    state_path = run / "state.pt"
    if not state_path.is_file():
        sys.exit(f"error: {state_path}: no training state to pack")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("state-*.safetensors"):
        old.unlink()
    shards: list[str] = []
    if keep == "state":
        tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten(state, tensors)
        shards = write_shards(tensors, dest)
        (dest / "state.json").write_text(json.dumps({"skeleton": skeleton, "shards": shards}, allow_nan=True))
    for name in COPIED:
        if keep == "logs" and name.endswith(".safetensors"):
            continue
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    cfg = json.loads(state["config"])
    run_name = str(dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest)
    prior = [r for r in read_ledger() if r["run"] == run_name]
    step_from = int(prior[-1]["step_to"]) if prior else 0
    step_to = int(state["step"])
    last = json.loads((run / "last.json").read_text()) if (run / "last.json").is_file() else {}
    row = {
        "date": time.strftime("%Y-%m-%d"),
        "run": run_name,
        "model": cfg["model"],
        "machine": machine,
        "step_from": step_from,
        "step_to": step_to,
        "batch": cfg["batch"],
        "size": cfg["size"],
        "samples": (step_to - step_from) * cfg["batch"],
        "wall_s": f"{wall_s:.0f}" if wall_s is not None else "",
        "best_selection_ssim": f"{float(state['best']):.4f}",
        "git_commit": last.get("git_commit") or "",
        "note": note,
    }
    append_ledger(row)
    print(f"packed {run} step {step_to} into {dest} ({len(shards)} shard(s)); ledger: +{step_to - step_from} steps")


def unpack(src: Path, run: Path) -> None:
    if not (src / "state.json").is_file():
        sys.exit(f"error: {src / 'state.json'}: no training state here (packed with --keep weights or logs): nothing to resume")
    meta = json.loads((src / "state.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for name in meta["shards"]:
        tensors.update(load_file(str(src / name)))
    state = unflatten(meta["skeleton"], tensors)
    run.mkdir(parents=True, exist_ok=True)
    if (run / "state.pt").exists():
        sys.exit(f"error: {run / 'state.pt'}: already exists; unpack into an empty run folder")
    for name in COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, run / name)
    torch.save(state, run / "state.pt")
    print(f"unpacked step {state['step']} into {run}: continue with `dereflect train ... --out {run} --resume`")


def read_ledger() -> list[dict[str, str]]:
    if not LEDGER.is_file():
        return []
    with LEDGER.open(newline="") as fh:
        return list(csv.DictReader(fh))


def append_ledger(row: dict[str, Any]) -> None:
    new = not LEDGER.is_file()
    LEDGER.parent.mkdir(parents=True, exist_ok=True)
    with LEDGER.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, LEDGER_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def summary() -> None:
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for r in read_ledger():
        t = totals[r["model"]]
        t[0] += int(r["step_to"]) - int(r["step_from"])
        t[1] += int(r["samples"])
        t[2] += float(r["wall_s"] or 0)
    print(f"{'model':22s} {'steps':>8s} {'samples':>10s} {'hours':>7s}")
    for model, (steps, samples, wall) in sorted(totals.items()):
        print(f"{model:22s} {steps:8d} {samples:10d} {wall / 3600:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="run folder -> results folder (+ one ledger row)")
    p.add_argument("run", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--machine", required=True, help="what it trained on, e.g. '2-core AMD EPYC CPU' or 'H200'")
    p.add_argument("--wall-s", type=float, help="wall-clock seconds this piece trained")
    p.add_argument("--note", default="")
    p.add_argument("--keep", choices=("state", "weights", "logs"), default="state", help="state: resumable (default)")
    u = sub.add_parser("unpack", help="results folder -> run folder with a state.pt for --resume")
    u.add_argument("src", type=Path)
    u.add_argument("run", type=Path)
    sub.add_parser("ledger", help="cumulative steps, samples and hours per model")
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.run.resolve(), args.dest.resolve(), args.machine, args.wall_s, args.note, args.keep)
    elif args.cmd == "unpack":
        unpack(args.src.resolve(), args.run.resolve())
    else:
        summary()


if __name__ == "__main__":
    main()
