"""Kill `dereflect train` with SIGKILL at random moments, resume it, and prove nothing was lost.

Why: training runs for hours on lent machines that get taken back without warning. The trainer
promises (dereflect/train/loop.py) that a run killed at ANY moment leaves complete checkpoints on
disk and that `--resume` continues bit-exactly. This harness checks that promise end to end,
through the real command in a subprocess:

1. an uninterrupted reference run (tiny teacher-small, CPU, fixed seed, checkpoint every step);
2. the same run killed >= N times - at random times, and while a checkpoint is being written
   (it polls the run folder for the temp file `.state.pt.*.tmp`, `.last.safetensors.*.tmp`, ...
   to appear and kills then) - and restarted with `--resume` after each kill;
3. after every kill: state.pt loads (torch.load weights_only=True), last/best.safetensors load as
   models (strict), the JSON sidecars parse, the CSV logs parse;
4. at the end: weights, optimiser state and best checkpoint equal the reference's bit for bit, the
   logs hold every step once with the reference's losses, and no temp file is left behind.

    python tools/kill_resume.py                 # teacher, 12 kills (make kill-resume)
    python tools/kill_resume.py --stage both    # then the student (6 kills) too

Exit status 0 when every check passed. tests/test_faults.py runs a short version.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = dict(widths=[8, 8, 16, 16], blocks=[0, 0, 1], dyn_channels=[8, 8, 16], flow_radius=[1, 1, 2])
#: Files a checkpoint write replaces atomically (temp file `.NAME.XXXX.tmp` beside them).
WRITE_TARGETS = ("state.pt", "last.safetensors", "last.json", "best.safetensors", "train.csv")
CHECKPOINTS = ("last.safetensors", "best.safetensors")
SIDECARS = ("last.json", "best.json", "config.json")
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Kill:
    """When to kill one attempt: after `delay` seconds ("time"), or when the `nth` temp file of
    `target` appears ("write"; then `delay`, when > 0, is a fallback: a write that may not come
    - best.safetensors is written only when validation improves - must not let the run finish)."""

    mode: str
    delay: float = 0.0
    target: str = ""
    nth: int = 1

    def describe(self) -> str:
        return f"at {self.delay:.2f} s" if self.mode == "time" else f"writing {self.target} (#{self.nth})"


@dataclass
class Summary:
    stage: str
    kills: int = 0
    kills_during_write: int = 0
    writes_hit: dict[str, int] = field(default_factory=dict)
    resumes: int = 0
    fresh_starts: int = 0
    finished_early: int = 0  # attempts that completed before their kill moment
    integrity_checks: int = 0
    problems: list[str] = field(default_factory=list)
    equal: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.equal and not self.problems

    def lines(self) -> list[str]:
        hit = ", ".join(f"{k} {v}" for k, v in sorted(self.writes_hit.items())) or "none"
        return [
            f"{self.stage}: kills {self.kills}, kills during writes {self.kills_during_write} ({hit}), "
            f"resumes {self.resumes}, fresh starts {self.fresh_starts}, finished before the kill {self.finished_early}",
            f"{self.stage}: checkpoint folders checked after a kill {self.integrity_checks}, half-written files found "
            f"{sum('half-written' in p for p in self.problems)}",
            f"{self.stage}: equal to the uninterrupted run: {'yes' if self.equal else 'no'} ({self.seconds:.0f} s)",
            *(f"{self.stage}: PROBLEM {p}" for p in self.problems),
        ]


# ------------------------------------------------------------------------------------------ set-up


def write_config(path: Path, stage: str, steps: int, ckpt_every: int = 1, val_every: int = 4) -> Path:
    """A tiny, fast config (CPU, 32 px, perceptual loss off) with a checkpoint every step or two."""
    values: dict = dict(
        stage=stage,
        steps=steps,
        batch=2,
        size=32,
        frames=3,
        val_samples=2,
        val_every=val_every,
        ckpt_every=ckpt_every,
        log_every=1,
        perceptual="off",
        warmup=2,
        lr=1.0e-3,
        max_photo_side=128,
    )
    if stage == "teacher":
        values.update(model="teacher-small", model_overrides=TINY_TEACHER)
    else:
        values.update(model="student-nano")
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


def make_teacher(path: Path) -> Path:
    """A random tiny teacher for the student stage (distillation from it is still deterministic)."""
    import torch

    from dereflect.models import create_model, save_checkpoint

    torch.manual_seed(0)
    teacher = create_model("teacher-small", **{k: tuple(v) for k, v in TINY_TEACHER.items()}, n_frames=3)
    return save_checkpoint(teacher, path)


def train_command(stage: str, config: Path, run: Path, seed: int, resume: bool, teacher: Path | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "dereflect",
        "train",
        stage,
        "--config",
        str(config),
        "--out",
        str(run),
        "--device",
        "cpu",
        "--seed",
        str(seed),
    ]
    if stage == "student":
        cmd += ["--teacher", str(teacher)]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DEREFLECT_GIT_COMMIT="kill-resume", PYTHONUNBUFFERED="1", COLUMNS="120")
    return env


def plan_kills(n: int, rng: random.Random, max_delay: float) -> list[Kill]:
    """Alternate random-time kills and kills during each kind of checkpoint write."""
    plan: list[Kill] = []
    targets = list(WRITE_TARGETS)
    for i in range(n):
        if i % 2 == 0:
            plan.append(Kill("time", delay=rng.uniform(0.3, max_delay)))
        else:
            target = targets[(i // 2) % len(targets)]
            # train.csv is rewritten once, at a resume's start; the others every step or validation
            plan.append(
                Kill(
                    "write",
                    delay=rng.uniform(max_delay, 2 * max_delay),
                    target=target,
                    nth=1 if target == "train.csv" else rng.randint(1, 3),
                )
            )
    return plan


# ------------------------------------------------------------------------------------------ running


@dataclass
class Attempt:
    killed: bool
    returncode: int | None
    during_write: str | None  # which file's temp file existed when the process died
    log: Path


def _temp_files(run: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(run) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _target_of(tmp_name: str) -> str:
    """`.state.pt.ab12cd.tmp` -> state.pt"""
    return tmp_name[1:].rsplit(".", 2)[0]


def run_attempt(cmd: list[str], run: Path, kill: Kill | None, log: Path, timeout: float = RUN_TIMEOUT_S) -> Attempt:
    """Start the command; SIGKILL it at the planned moment (or let it finish when kill is None)."""
    with log.open("wb") as out:
        before = set(_temp_files(run))  # a previous kill's litter (the trainer removes it when it starts)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
        started, seen = time.monotonic(), set()
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"{' '.join(cmd)} did not finish in {timeout:.0f} s (log {log})")
                fire = False
                if kill is not None and kill.mode == "time":
                    fire = time.monotonic() - started >= kill.delay
                elif kill is not None:
                    fire = 0 < kill.delay <= time.monotonic() - started  # the fallback
                    for name in _temp_files(run):
                        if _target_of(name) == kill.target and name not in seen and name not in before:
                            seen.add(name)
                            fire = fire or len(seen) >= kill.nth
                if fire:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    # SIGKILL leaves the temp file of a write in progress behind: that is how we know
                    leftovers = [_target_of(n) for n in _temp_files(run) if n not in before]
                    return Attempt(True, proc.returncode, leftovers[0] if leftovers else None, log)
                time.sleep(0.0003 if kill is not None and kill.mode == "write" else 0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Attempt(False, proc.returncode, None, log)


# ------------------------------------------------------------------------------------------ checks


def check_folder(run: Path) -> list[str]:
    """Everything a killed run left must be whole: checkpoints load, sidecars and logs parse."""
    import torch
    from safetensors.torch import load_file

    from dereflect.errors import DereflectError
    from dereflect.models import load_checkpoint

    problems: list[str] = []
    state = run / "state.pt"
    if state.exists():
        try:
            loaded = torch.load(state, map_location="cpu", weights_only=True)
            int(loaded["step"]), loaded["modules"], loaded["optims"]
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"half-written {state.name}: {type(exc).__name__}: {str(exc)[:200]}")
    for name in CHECKPOINTS:
        path = run / name
        if path.exists():
            try:
                load_file(str(path))
                load_checkpoint(path)
            except (DereflectError, Exception) as exc:  # noqa: BLE001
                problems.append(f"half-written {name}: {exc}")
    for name in SIDECARS:
        path = run / name
        if path.exists():
            try:
                json.loads(path.read_text())
            except ValueError as exc:
                problems.append(f"half-written {name}: {exc}")
    for name in ("train.csv", "val.csv"):
        path = run / name
        if path.exists():
            with path.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    if None in row.values() or None in row or not row["step"].isdigit():
                        problems.append(f"half-written {name}: bad row {row}")
                        break
    return problems


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def compare_runs(ref: Path, run: Path) -> list[str]:
    """Bit-exact equality of the final checkpoints, optimiser state and logged losses."""
    import torch
    from safetensors.torch import load_file

    problems: list[str] = []
    for name in CHECKPOINTS:
        a, b = load_file(str(ref / name)), load_file(str(run / name))
        if a.keys() != b.keys():
            problems.append(f"{name}: different tensors")
            continue
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        if differ:
            problems.append(f"{name}: {len(differ)} tensor(s) differ from the uninterrupted run, e.g. {differ[0]}")
        if (
            json.loads((ref / name).with_suffix(".json").read_text())["step"]
            != json.loads((run / name).with_suffix(".json").read_text())["step"]
        ):
            problems.append(f"{name}: saved at another step")
    sa = torch.load(ref / "state.pt", map_location="cpu", weights_only=True)
    sb = torch.load(run / "state.pt", map_location="cpu", weights_only=True)

    def flat(obj, prefix=""):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from flat(v, f"{prefix}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                yield from flat(v, f"{prefix}/{i}")
        else:
            yield prefix, obj

    fa, fb = dict(flat(sa)), dict(flat(sb))
    if fa.keys() != fb.keys():
        problems.append("state.pt: different structure")
    else:
        differ = [
            k for k in fa if (torch.is_tensor(fa[k]) and not torch.equal(fa[k], fb[k])) or (not torch.is_tensor(fa[k]) and fa[k] != fb[k])
        ]
        if differ:
            problems.append(f"state.pt: {len(differ)} entries differ (weights or optimiser), e.g. {differ[0]}")
    for name, skip in (("train.csv", {"it_s"}), ("val.csv", set())):
        ra, rb = _csv(ref / name), _csv(run / name)
        steps = [r["step"] for r in rb]
        if steps != [r["step"] for r in ra]:
            problems.append(f"{name}: steps {steps} instead of {[r['step'] for r in ra]} (lost or repeated rows)")
            continue
        for x, y in zip(ra, rb):
            if {k: v for k, v in x.items() if k not in skip} != {k: v for k, v in y.items() if k not in skip}:
                problems.append(f"{name}: step {x['step']} logged other values")
                break
    leftovers = _temp_files(run)
    if leftovers:
        problems.append(f"temp files left behind: {leftovers}")
    return problems


# ------------------------------------------------------------------------------------------ harness


def harness(
    work: Path,
    stage: str = "teacher",
    kills: int = 12,
    steps: int = 60,
    seed: int = 0,
    plan: list[Kill] | None = None,
    max_delay: float = 6.0,
    say=print,
) -> Summary:
    """Reference run, killed-and-resumed run, checks. `plan` overrides the random kill plan."""
    t0 = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    summary = Summary(stage)
    config = write_config(work / f"{stage}.yaml", stage, steps)
    teacher = make_teacher(work / "teacher.safetensors") if stage == "student" else None
    ref, run = work / f"{stage}-reference", work / f"{stage}-killed"
    for folder in (ref, run):
        shutil.rmtree(folder, ignore_errors=True)
    logs = work / f"{stage}-logs"
    logs.mkdir(exist_ok=True)

    say(f"{stage}: uninterrupted reference run ({steps} steps)")
    done = run_attempt(train_command(stage, config, ref, seed, False, teacher), ref, None, logs / "reference.log")
    if done.returncode != 0:
        summary.problems.append(f"reference run failed (exit {done.returncode}); see {done.log}")
        return summary

    rng = random.Random(seed)
    plan = list(plan) if plan is not None else plan_kills(kills, rng, max_delay)
    attempt_no = 0
    finished = False
    for kill in plan + [None]:  # the last attempt runs to the end
        attempt_no += 1
        resume = (run / "state.pt").is_file()
        cmd = train_command(stage, config, run, seed, resume, teacher)
        summary.resumes += resume
        summary.fresh_starts += not resume
        result = run_attempt(cmd, run, kill, logs / f"attempt-{attempt_no:02d}.log")
        if not result.killed:
            if result.returncode != 0:
                summary.problems.append(
                    f"attempt {attempt_no} failed (exit {result.returncode}); see {result.log}: "
                    + result.log.read_text(errors="replace").strip().splitlines()[-1][:300]
                )
                break
            if kill is not None:
                summary.finished_early += 1
            finished = True
            break
        summary.kills += 1
        if result.during_write:
            summary.kills_during_write += 1
            summary.writes_hit[result.during_write] = summary.writes_hit.get(result.during_write, 0) + 1
        found = check_folder(run)
        summary.integrity_checks += 1
        summary.problems += [f"after kill {summary.kills} ({kill.describe()}): {p}" for p in found]
        step = _saved_step(run)
        say(
            f"{stage}: kill {summary.kills:2d} {kill.describe():28s} -> died "
            f"{'while writing ' + result.during_write if result.during_write else 'between writes'}; "
            f"state.pt at step {step}; folder {'whole' if not found else 'DAMAGED'}"
        )
    if summary.kills < len(plan):
        summary.problems.append(
            f"only {summary.kills} of {len(plan)} planned kills happened (the run finished first): give it more --steps"
        )
    if finished:
        differences = compare_runs(ref, run)
        summary.equal = not any(p.split(":")[0] in CHECKPOINTS + ("state.pt",) for p in differences)
        summary.problems += differences
    else:
        summary.problems.append("the killed run never completed")
    summary.seconds = time.monotonic() - t0
    return summary


def _saved_step(run: Path) -> str:
    import torch

    try:
        return str(torch.load(run / "state.pt", map_location="cpu", weights_only=True)["step"]) if (run / "state.pt").exists() else "-"
    except Exception:  # noqa: BLE001 - reported by check_folder
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("teacher", "student", "both"), default="teacher")
    parser.add_argument("--kills", type=int, default=12, help="kills of the teacher run (the student gets half)")
    parser.add_argument("--steps", type=int, default=60, help="teacher steps")
    parser.add_argument("--student-steps", type=int, default=20, help="student steps (a student step costs ~3 teacher steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder, removed)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    stages = ("teacher", "student") if args.stage == "both" else (args.stage,)
    summaries = []
    try:
        for stage in stages:
            kills = args.kills if stage == "teacher" or args.stage == "student" else max(2, args.kills // 2)
            steps = args.steps if stage == "teacher" else args.student_steps
            summaries.append(harness(work, stage, kills, steps, args.seed))
    finally:
        if args.work is None and all(s.ok for s in summaries):
            shutil.rmtree(work, ignore_errors=True)
        elif summaries:
            print(f"logs and run folders kept in {work}")
    print("---- kill-resume ----")
    for s in summaries:
        print("\n".join(s.lines()))
    return 0 if summaries and all(s.ok for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
