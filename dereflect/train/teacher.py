"""Stage 1: train the multi-view teacher on synthesised sequences.

L_teacher = a*L_R + b*L_P + c*L_FD + d*L_VS (+ flow and per-frame layer supervision, which
synthetic data makes possible because the true layers and flows are known by construction).
"""

from __future__ import annotations

import numpy as np
import torch

from dereflect.data.datasets import SyntheticSequences
from dereflect.data.photos import split_photos
from dereflect.data.synth import SynthConfig
from dereflect.models import create_model
from dereflect.models.blocks import resize_flow
from dereflect.train import losses as L
from dereflect.train.data import DataSources, LabelledSequences, StepData, discover, load_all_photos, warn_unused
from dereflect.train.loop import Trainer
from dereflect.train.scoring import score_batch


def adam(module: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": params, "base_lr": lr}], lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)


def build_synthetic(cfg, sources: DataSources, stage_seed: int):
    """Train/val synthetic sequence sets from held-apart photos (val photos never train)."""
    photos = load_all_photos(sources, cfg.max_photo_side)
    train_photos, val_photos = split_photos(photos, cfg.val_fraction, cfg.seed)
    synth = SynthConfig(glass_in_label=cfg.glass_in_label)
    train = SyntheticSequences(
        train_photos,
        n_frames=cfg.frames,
        size=cfg.size,
        length=cfg.steps * cfg.batch,
        seed=cfg.seed + stage_seed,
        augment=True,
        config=synth,
    )
    val = SyntheticSequences(
        val_photos, n_frames=cfg.frames, size=cfg.size, length=cfg.val_samples, seed=10_000 + cfg.seed, augment=False, config=synth
    )
    return train, val, len(train_photos), len(val_photos)


class TeacherTrainer(Trainer):
    stage = "teacher"

    def build(self) -> None:
        cfg = self.cfg
        self.sources = discover(self.data_dirs)
        warn_unused(self.sources, "teacher")
        synth, self.val_set, n_train, n_val = build_synthetic(cfg, self.sources, stage_seed=0)
        self.n_photos = (n_train, n_val)
        sequences = LabelledSequences(self.sources.sequences, cfg.size) if self.sources.sequences else None
        self.dataset = StepData(synth, cfg.batch, cfg.seed, size=cfg.size, sequences=sequences, sequence_fraction=cfg.sequence_fraction)
        self._model = create_model(cfg.model, **cfg.model_overrides).to(self.device).train()
        self.net = self.wrap_ddp(self._model)
        self.perceptual = None
        if cfg.perceptual != "off" and cfg.loss.perc > 0:
            self.perceptual = L.PerceptualLoss(source=cfg.perceptual, layers=L.DEFAULT_LAYERS[: cfg.perceptual_layers]).to(self.device)
        self.opt = adam(self._model, cfg.lr, cfg.weight_decay)

    def trainable(self):
        return {"model": (self._model, self.opt)}

    def data_description(self) -> str:
        return f"synthetic {self.cfg.frames}-frame sequences at {self.cfg.size}px from {self.n_photos[0]} photos ({self.n_photos[1]} held out); {self.sources.describe()}"

    def compute_losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        w = self.cfg.loss
        t_true, r_true = batch["transmission"], batch["reflection"]
        terms: dict[str, torch.Tensor] = {}
        terms["rec"] = L.reconstruction_loss(out["transmission"], t_true) + 0.5 * L.reconstruction_loss(out["reflection"], r_true)
        if self.perceptual is not None:
            terms["perc"] = self.perceptual(out["transmission"], t_true)
        fd = L.exclusion_loss(out["transmission"], out["reflection"])
        if out.get("psi_R") is not None:
            fd = fd + L.feature_decoupling_loss(out["psi_T"], out["psi_R"])
        terms["fd"] = fd
        if "layers_T" in out:
            terms["layers"] = (out["layers_T"] - batch["transmission_all"]).abs().mean() + (
                out["layers_R"] - batch["reflection_all"]
            ).abs().mean()
            if "flows_T" in out:
                size = t_true.shape[-2:]
                full = lambda fl: resize_flow(fl.flatten(0, 1), size).unflatten(0, fl.shape[:2])
                terms["vs"] = L.view_synthesis_loss(
                    batch["input"], out["layers_T"], out["layers_R"], full(out["flows_T"][0]), full(out["flows_R"][0]), out["mid_index"]
                )
        if "flows_T" in out:
            terms["flow"] = L.flow_loss(out["flows_T"], batch["flow_T"]) + L.flow_loss(out["flows_R"], batch["flow_R"])
        weights = {"rec": w.rec, "perc": w.perc, "fd": w.fd, "vs": w.vs, "flow": w.flow, "layers": w.layers}
        terms["total"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def train_step(self, batch: dict, step: int) -> dict[str, float]:
        with self.autocast():
            out = self.net(batch["frames"])
        out = {k: (v.float() if torch.is_tensor(v) else [x.float() for x in v] if isinstance(v, list) else v) for k, v in out.items()}
        terms = self.compute_losses(out, batch)
        self.opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self._model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def validate(self) -> dict[str, float]:
        rows: dict[str, list[float]] = {}
        for i in range(len(self.val_set)):
            item = self.val_set[i]
            frames = item["frames"].unsqueeze(0).to(self.device)
            with self.autocast():
                pred = self._model(frames)["transmission"].float()
            scores = score_batch(pred, item["transmission"][None], item["input"][None])
            for k, v in scores.items():
                rows.setdefault(k, []).extend(v)
        metrics = {f"synth_{k}": float(np.mean(v)) for k, v in rows.items()}
        metrics["selection_ssim"] = metrics["synth_ssim"]
        return metrics
