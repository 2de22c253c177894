"""Stage 2: distil the frozen teacher into a single-image student.

L_student = a*L_R + b*L_P + c*(L_G + L_D) + d*L_T. The student sees only the middle frame; on
synthetic steps the frozen teacher sees the whole sequence and its dynamics representation D is
the target of the student's hallucinated D_hat (through the trainer-owned 1x1 KT projections,
so a small student need not match the teacher's channel counts). Steps drawn from real pairs
(when --data has them) train L_R, L_P and the GAN only: there is no sequence for the teacher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dereflect.data.datasets import PairedFolder
from dereflect.errors import DereflectError
from dereflect.models import create_model, load_checkpoint
from dereflect.models.blocks import pad_to_multiple
from dereflect.train import losses as L
from dereflect.train.data import LabelledSequences, RegisteredSequences, StepData, discover, load_pairs
from dereflect.train.loop import Trainer
from dereflect.train.scoring import score_batch
from dereflect.train.teacher import adam, build_synthetic


class StudentWithKT(nn.Module):
    """The student plus its KT projections, as one module so DDP syncs both."""

    def __init__(self, student: nn.Module, kt: nn.ModuleList) -> None:
        super().__init__()
        self.student, self.kt = student, kt

    def forward(self, x: torch.Tensor) -> dict:
        out = self.student.forward_features(x)
        if out["d_hat"] is not None and len(self.kt):
            out["d_proj"] = [proj(d) for proj, d in zip(self.kt, out["d_hat"])]
        return out


class StudentTrainer(Trainer):
    stage = "student"

    def __init__(self, cfg, run_dir, *, teacher: Path, **kwargs) -> None:
        self.teacher_path = Path(teacher)
        super().__init__(cfg, run_dir, **kwargs)

    def build(self) -> None:
        cfg = self.cfg
        self._model = create_model(cfg.model, **cfg.model_overrides).to(self.device).train()
        use_kt = self._model.config.use_kt and self._model.config.use_hallucination and cfg.loss.kt > 0
        self.teacher = None
        if use_kt:
            self.teacher = load_checkpoint(self.teacher_path, expect="teacher").to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            t_frames = self.teacher.config.n_frames
            if t_frames != cfg.frames:
                cfg.frames = t_frames  # the teacher was trained on this many frames: feed it the same
        elif not self.teacher_path.is_file():
            raise DereflectError(self.teacher_path, "no such teacher checkpoint")
        self.sources = discover(self.data_dirs)
        synth, self.val_set, n_train, n_val = build_synthetic(cfg, self.sources, stage_seed=1)
        self.n_photos = (n_train, n_val)
        self.real_pairs = load_pairs(self.sources.pairs) if self.sources.pairs else []
        sequences = LabelledSequences(self.sources.sequences, cfg.size) if self.sources.sequences else None
        #: A burst student (models/burst_student.py) sees registered frames; real pairs and composites
        #: reach it as static bursts (five equal frames: zero cues, its single-image behaviour).
        self.frames_in = getattr(self._model, "input_frames", None)
        if self.frames_in is not None:
            if self.frames_in != cfg.frames:
                raise DereflectError(None, f"{cfg.model} takes {self.frames_in} frames; set frames: {self.frames_in} in the config")
            synth = RegisteredSequences(synth, cfg.burst_residual_px, cfg.seed + 5)
            self.val_set = RegisteredSequences(self.val_set)  # validation: registration only, comparable across runs
            sequences = RegisteredSequences(sequences) if sequences is not None else None
        self.dataset = StepData(
            synth,
            cfg.batch,
            cfg.seed + 1,
            self.real_pairs,
            cfg.real_fraction,
            cfg.size,
            sequences=sequences,
            sequence_fraction=cfg.sequence_fraction,
            composites=self.sources.reflections,
            composite_fraction=cfg.composite_fraction,
        )
        self.val_pairs_set = PairedFolder(self.val_pairs, size=None) if self.val_pairs else None
        # KT: 1x1 projections of D_hat onto the teacher's channels (training only; not shipped).
        kt = nn.ModuleList()
        if self.teacher is not None:
            for c_s, c_t in zip(self._model.config.dyn_channels, self.teacher.config.dyn_channels):
                kt.append(nn.Conv2d(c_s, c_t, 1))
        self.bundle = StudentWithKT(self._model, kt).to(self.device)
        self.net = self.wrap_ddp(self.bundle, find_unused=True)
        self.perceptual = None
        if cfg.perceptual != "off" and cfg.loss.perc > 0:
            layers = L.DEFAULT_LAYERS[: cfg.perceptual_layers]
            self.perceptual = L.PerceptualLoss(source=cfg.perceptual, layers=layers).to(self.device)
        self.opt = adam(self.bundle, cfg.lr, cfg.weight_decay)
        self.disc = None
        if cfg.gan != "off" and cfg.loss.gan > 0:
            self.disc = L.PatchDiscriminator().to(self.device).train()
            self.opt_d = adam(self.disc, cfg.d_lr)
            self.disc_net = self.wrap_ddp(self.disc)

    def trainable(self):
        mods = {"model": (self.bundle, self.opt)}
        if self.disc is not None:
            mods["disc"] = (self.disc, self.opt_d)
        return mods

    def data_description(self) -> str:
        real = f"; {len(self.real_pairs)} real pairs (fraction {self.cfg.real_fraction})" if self.real_pairs else ""
        encoder = f"; encoder init {self.encoder_init}" if self.encoder_init else ""
        return (
            f"middle frames of synthetic {self.cfg.frames}-frame sequences at {self.cfg.size}px from "
            f"{self.n_photos[0]} photos ({self.n_photos[1]} held out){real}; teacher {self.teacher_path.name}; {self.sources.describe()}{encoder}"
        )

    @property
    def loss_weights(self) -> dict[str, float]:
        w = self.cfg.loss
        return {"rec": w.rec, "perc": w.perc, "kt": w.kt, "gan_g": w.gan, "ssim": w.ssim}

    def model_input(self, batch: dict) -> torch.Tensor:
        """What the model takes: the photo, or for a burst student the registered frames (a single
        photo as a static burst)."""
        if self.frames_in is None:
            return batch["input"]
        if "frames" in batch:
            return batch["frames"]
        return batch["input"][:, None].expand(-1, self.frames_in, -1, -1, -1)

    def loss_terms(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The student's loss terms on one batch (unweighted: see loss_weights) and its prediction.

        One place for the loss, used by train_step and by tools/kt_gradients.py (which measures
        each term's share of the update).
        """
        cfg = self.cfg
        x, t_true = self.model_input(batch), batch["transmission"]
        with self.autocast():
            out = self.net(x)
        pred = out["transmission"].float()
        terms: dict[str, torch.Tensor] = {"rec": L.reconstruction_loss(pred, t_true)}
        if cfg.loss.ssim > 0:
            terms["ssim"] = L.structure_loss(pred, t_true)
        if self.perceptual is not None:
            terms["perc"] = self.perceptual(pred, t_true)
        if self.teacher is not None and "frames" in batch and "d_proj" in out:
            with torch.no_grad(), self.autocast():
                d_teacher = [d.float() for d in self.teacher(batch["frames"])["d"]]
            terms["kt"] = L.distillation_loss([d.float() for d in out["d_proj"]], d_teacher)
        if self.disc is not None:
            d_real, d_fake = self.disc_net(torch.cat([t_true, pred])).chunk(2)  # one forward: DDP-friendly
            terms["gan_g"] = L.gan_loss(cfg.gan, d_real, d_fake, for_discriminator=False)
        return terms, pred

    def train_step(self, batch: dict, step: int) -> dict[str, float]:
        cfg, w = self.cfg, self.cfg.loss
        t_true = batch["transmission"]
        terms, pred = self.loss_terms(batch)
        weights = self.loss_weights
        total = sum(weights[k] * v for k, v in terms.items())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.bundle.parameters(), cfg.grad_clip)
        self.opt.step()
        result = {k: float(v.detach()) for k, v in terms.items()}
        if self.disc is not None:
            d_real, d_fake = self.disc_net(torch.cat([t_true, pred.detach()])).chunk(2)
            d_loss = L.gan_loss(cfg.gan, d_real, d_fake, for_discriminator=True)
            self.opt_d.zero_grad(set_to_none=True)
            (w.gan * d_loss).backward()
            self.opt_d.step()
            result["gan_d"] = float(d_loss.detach())
        result["total"] = float(total.detach())
        result["real"] = float("frames" not in batch)
        return result

    def validate(self) -> dict[str, float]:
        rows: dict[str, list[float]] = {}
        for i in range(len(self.val_set)):
            item = self.val_set[i]
            x = self.model_input({k: v[None] for k, v in item.items() if k in ("input", "frames")}).to(self.device)
            with self.autocast():
                pred = self._model(x).float()
            for k, v in score_batch(pred, item["transmission"][None], item["input"][None]).items():
                rows.setdefault(f"synth_{k}", []).extend(v)
        if self.val_pairs_set is not None:
            for i in range(len(self.val_pairs_set)):
                item = self.val_pairs_set[i]
                x, (h, w) = pad_to_multiple(item["input"][None].to(self.device), self._model.size_multiple)
                with self.autocast():
                    pred = self._model(self.model_input({"input": x})).float()[..., :h, :w]
                for k, v in score_batch(pred, item["transmission"][None], item["input"][None]).items():
                    rows.setdefault(f"real_{k}", []).extend(v)
        metrics = {k: float(np.mean(v)) for k, v in rows.items()}
        # A burst student is chosen on the sequences (its real pairs are static bursts: its single-image side).
        metrics["selection_ssim"] = metrics["synth_ssim"] if self.frames_in else metrics.get("real_ssim", metrics["synth_ssim"])
        return metrics
