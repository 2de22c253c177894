"""The loop both stages share: devices, DDP, schedule, logging, validation, checkpoints, resume.

A stage subclasses `Trainer` and supplies the model, the data and one optimisation step.
Checkpointing is built for being killed at any moment: `state.pt` (everything needed to
continue: weights, optimisers, schedule, step, best score) is written to a temp file and renamed,
so the folder always holds a complete state from at most `ckpt_every` steps ago; `--resume`
reloads it with torch.load(weights_only=True) (no pickled code) and continues bit-exactly on CPU,
because every batch and every step's random seed is a function of the step number alone.
Users get `last.safetensors` and `best.safetensors` (+ JSON), loadable by `load_checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from dereflect.errors import DereflectError, first_line, os_reason
from dereflect.files import atomic_torch_save, write_text_atomic
from dereflect.models import save_checkpoint
from dereflect.train.config import TrainConfig, config_from_dict
from dereflect.train.csvlog import CsvLog
from dereflect.train.data import StepSampler
from dereflect.train.runlock import RunFolderLock


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DereflectError(None, "--device cuda asked for, but no CUDA device is available")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise DereflectError(None, f"unknown device '{name}' (auto, cpu, cuda, cuda:N)")
    return torch.device(name)


def git_commit() -> str | None:
    """The code's commit, recorded in every checkpoint: env DEREFLECT_GIT_COMMIT, else git asked from
    this package's folder (a checkout; an installed package outside one gives None)."""
    if os.environ.get("DEREFLECT_GIT_COMMIT"):
        return os.environ["DEREFLECT_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr_min_factor."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr_min_factor + (1 - cfg.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temp files of writes a killed run left behind (`.state.pt.*.tmp`, ...): never read, only litter."""
    names = ("state.pt", "last.safetensors", "last.json", "best.safetensors", "best.json", "config.json", "train.csv", "val.csv")
    stale = [p for name in names for p in run_dir.glob(f".{name}.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class Trainer:
    """Shared training loop; subclasses implement build(), train_step() and validate()."""

    stage = "base"
    encoder_init: str | None = None  # where a fresh run's pretrained encoder weights came from

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        *,
        data_dirs: list[Path] | None = None,
        val_pairs: Path | None = None,
        device: str = "auto",
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.data_dirs, self.val_pairs = list(data_dirs or []), val_pairs
        self.progress = progress
        self.rank, self.world = 0, 1
        if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
            dist.init_process_group(backend)
        if dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = pick_device(device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.start_step, self.best = 0, -math.inf
        self._lock = RunFolderLock(self.run_dir)
        if self.is_main:
            self._lock.acquire()  # before anything reads or cleans the folder: a second run is refused here
        try:
            self._prepare(resume, val_pairs)
        except BaseException:
            self._lock.release()  # a refused start must not keep the folder locked (tracebacks keep `self` alive)
            raise

    def _prepare(self, resume: bool, val_pairs: Path | None) -> None:
        """Check the folder, build the stage, restore or initialise the weights, write config.json."""
        cfg = self.cfg
        if val_pairs is not None and not Path(val_pairs).is_dir():
            raise DereflectError(val_pairs, "validation pairs folder does not exist")
        state_path = self.run_dir / "state.pt"
        if resume:
            if not state_path.is_file():
                raise DereflectError(state_path, "nothing to resume: no state.pt in the run folder")
        elif state_path.exists():
            raise DereflectError(self.run_dir, "run folder already holds a run: pass --resume to continue it, or use a new --out")
        torch.manual_seed(cfg.seed)
        self.build()  # model, optimisers, data (errors about data surface here, before any work)
        self.opt_modules = self.trainable()
        if cfg.init and not resume:
            self._init_weights(Path(cfg.init))
        elif not resume and hasattr(self.model, "load_pretrained"):
            # A pretrained encoder (ImageNet MobileNetV2) starts a fresh run only: --init and --resume bring their own weights.
            self.encoder_init = self.model.load_pretrained()
        if resume:
            self._load_state(state_path)
        if self.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DereflectError(self.run_dir, f"cannot create the run folder ({os_reason(exc)})") from None
            remove_stale_temp_files(self.run_dir)
            write_text_atomic(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2), "run config")

    # ---- to implement by a stage ---------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def trainable(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        """name -> (module, its optimiser); the first entry is the model that gets checkpointed."""
        raise NotImplementedError

    def train_step(self, batch: dict, step: int) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        raise NotImplementedError

    def data_description(self) -> str:
        return ""

    # ---- shared machinery ----------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def model(self) -> nn.Module:
        return self._model

    def wrap_ddp(self, module: nn.Module, find_unused: bool = False) -> nn.Module:
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)
        return module

    def loader(self) -> DataLoader:
        sampler = StepSampler(self.start_step, self.cfg.steps, self.cfg.batch, self.rank, self.world)
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.batch // self.world,
            sampler=sampler,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if self.cfg.workers else None,
        )

    def set_lr(self, step: int) -> float:
        f = lr_factor(step, self.cfg)
        for _, opt in self.opt_modules.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * f
        return self.cfg.lr * f

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp)

    def meta(self, step: int, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "step": step,
            "train_config": self.cfg.to_dict(),
            "data": self.data_description(),
            "git_commit": git_commit(),
            "device": str(self.device),
            "world_size": self.world,
            "metrics": metrics or {},
        }

    def _state(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "best": self.best,
            "config": json.dumps(self.cfg.to_dict()),
            "modules": {n: m.state_dict() for n, (m, _) in self.opt_modules.items()},
            "optims": {n: o.state_dict() for n, (_, o) in self.opt_modules.items()},
        }

    def _load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a corrupt file
            raise DereflectError(path, f"cannot read training state ({first_line(exc)})") from None
        saved = config_from_dict(json.loads(state["config"]))
        if saved.model != self.cfg.model or saved.model_overrides != self.cfg.model_overrides:
            raise DereflectError(
                path, f"run was for {saved.model} {saved.model_overrides}, not {self.cfg.model} {self.cfg.model_overrides}"
            )
        for name, (module, opt) in self.opt_modules.items():
            module.load_state_dict(state["modules"][name])
            opt.load_state_dict(state["optims"][name])
        self.start_step, self.best = int(state["step"]), float(state["best"])
        if saved.time_budget_s == 0 and self.cfg.time_budget_s:  # the budget already fixed the schedule
            self.cfg.steps, self.cfg.time_budget_s = saved.steps, 0.0

    def _init_weights(self, path: Path) -> None:
        from dereflect.models import load_checkpoint

        source = load_checkpoint(path)
        if hasattr(self.model, "init_from") and source.model_name != self.cfg.model:
            try:  # a burst student starts from a single-image student (models/burst_student.py)
                self.model.init_from(source)
            except ValueError as exc:
                raise DereflectError(path, f"cannot start {self.cfg.model} from {source.model_name}: {exc}") from None
            return
        if source.model_name != self.cfg.model or _architecture(source.config) != _architecture(self.model.config):
            raise DereflectError(path, f"init checkpoint is {source.model_name} {source.config}, not the model being trained")
        self.model.load_state_dict(source.state_dict())

    def save(self, step: int, metrics: dict[str, float] | None = None) -> None:
        if not self.is_main:
            return
        save_checkpoint(self.model, self.run_dir / "last.safetensors", **self.meta(step, metrics))
        atomic_torch_save(self._state(step), self.run_dir / "state.pt")

    def run(self) -> dict[str, Any]:
        """Train from start_step to cfg.steps; returns the final validation metrics. Releases the run folder."""
        try:
            return self._run()
        finally:
            self.close()

    def close(self) -> None:
        """Release the run folder (a finished or failed run; the process ending does it too)."""
        self._lock.release()

    def _run(self) -> dict[str, Any]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        cfg = self.cfg
        train_log = CsvLog(self.run_dir / "train.csv", self.start_step) if self.is_main else None
        val_log = CsvLog(self.run_dir / "val.csv", self.start_step) if self.is_main else None
        tb = self._tensorboard()
        metrics: dict[str, float] = {}
        step = self.start_step
        t0, done = time.perf_counter(), 0
        progress = Progress(
            TextColumn(f"[bold]{self.stage}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            disable=not (self.progress and self.is_main),
        )
        with progress:
            task = progress.add_task(self.stage, total=cfg.steps, completed=step, info="")
            for batch in self._batches():
                if step >= cfg.steps:
                    break
                torch.manual_seed(cfg.seed * 1_000_003 + step)  # every step's randomness depends on the step only
                lr = self.set_lr(step)
                losses = self.train_step(batch, step)
                step += 1
                done += 1
                rate = done / (time.perf_counter() - t0)
                if self.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                    row = {"step": step, "lr": f"{lr:.3e}", "it_s": f"{rate:.3f}", **{k: f"{v:.5f}" for k, v in losses.items()}}
                    train_log.write(row)
                    if tb:
                        for k, v in losses.items():
                            tb.add_scalar(f"train/{k}", v, step)
                if cfg.time_budget_s and done == cfg.probe_steps:
                    self._fit_time_budget(step, time.perf_counter() - t0, rate)
                    progress.update(task, total=cfg.steps)
                progress.update(task, completed=step, info=f"loss {losses.get('total', 0):.4f}  {rate:.2f} it/s")
                if step % cfg.val_every == 0 or step == cfg.steps:
                    metrics = self._validate_and_keep_best(step, val_log, tb)
                if step % cfg.ckpt_every == 0 or step == cfg.steps:
                    self.save(step, metrics)
        if tb:
            tb.close()
        if self.start_step >= cfg.steps and not metrics:
            metrics = self.validate() if self.is_main else {}
        return {"step": step, "it_s": done / max(time.perf_counter() - t0, 1e-9), **metrics}

    def _fit_time_budget(self, step: int, elapsed: float, rate: float) -> None:
        """Fix the schedule's length from the measured speed, once, early (during warm-up, so the
        steps already taken had the same learning rates). The fixed `steps` is saved with the state,
        so a resumed run keeps it."""
        steps = min(self.cfg.steps, step + max(1, int(rate * (self.cfg.time_budget_s - elapsed))))
        if self.world > 1:
            t = torch.tensor([steps], device=self.device if self.device.type == "cuda" else "cpu")
            dist.broadcast(t, 0)
            steps = int(t.item())
        self.cfg.steps, self.cfg.time_budget_s = steps, 0.0

    def _batches(self):
        if self.cfg.synthesis == "device":  # whole synthetic batches made on the training device
            from dereflect.train.device_batches import make_synthesizer, step_batches

            synthetic = self.dataset.synthetic
            synth = make_synthesizer(synthetic.photos, self.cfg, self.device, synthetic.seed)
            yield from step_batches(
                self.dataset, synth, self.start_step, self.cfg.steps, self.cfg.batch, self.rank, self.world, self.device
            )
            return
        for batch in self.loader():
            yield {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _validate_and_keep_best(self, step: int, val_log: CsvLog | None, tb) -> dict[str, float]:
        if not self.is_main:
            return {}
        self.model.eval()
        with torch.no_grad():
            metrics = self.validate()
        self.model.train()
        val_log.write({"step": step, **{k: f"{v:.5f}" for k, v in metrics.items()}})
        if tb:
            for k, v in metrics.items():
                tb.add_scalar(f"val/{k}", v, step)
        score = metrics.get("selection_ssim", -math.inf)
        if score > self.best:
            self.best = score
            save_checkpoint(self.model, self.run_dir / "best.safetensors", **self.meta(step, metrics))
        return metrics

    def _tensorboard(self):
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None  # tensorboard is in the [train] extra; the CSV logs are always written
        return SummaryWriter(str(self.run_dir / "tb"))


def _architecture(config: Any) -> dict[str, Any]:
    """A model config without `use_kt`: it switches a loss, not a layer, so a student trained without
    KT may start a run with KT (the equal-start KT ablation, issue 13)."""
    return {k: v for k, v in config.to_dict().items() if k != "use_kt"}
