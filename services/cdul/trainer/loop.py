"""The training loop: a ResNet learns the pseudo labels (KL loss), and every F epochs the
latent pseudo labels move towards the network's predictions (Eq. 8, gradient alignment).

Per epoch, in order:

1. one pass over the training images in a seeded order (``DistributedSampler`` with
   ``set_epoch``, also in a single process): forward, Bernoulli KL against the current
   pseudo labels ``y = sigmoid(latent)``, backward, Adam step. Each image's logits are
   kept (they cost nothing: the forward pass made them).
2. if this is an update epoch (:meth:`TrainConfig.updates_labels_in`), the latents move
   by one Eq. 8 step from those logits: ``align_latent``. Each image's label is used
   once per epoch, before its own update, so this equals updating each batch's labels
   right after its step (the study's code) while needing one all-gather per epoch.
   Every rank gathers the same logits; rank 0's result is broadcast.
3. mAP of the classifier on the training images (the kept logits) and of the pseudo
   labels against ground truth when known, and on the validation set; the metrics
   (``training/metrics.jsonl``, rewritten whole), the curves (``training/curves.png``)
   and the checkpoint are written by rank 0.

The method's equations come from :mod:`cdul.core.method.alignment`; nothing here
re-derives them.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from cdul import __version__
from cdul.core.classifier import build_classifier
from cdul.core.errors import ConfigError
from cdul.core.evaluation import evaluate
from cdul.core.method.alignment import align_latent, bernoulli_kl, from_latent, to_latent
from cdul.core.method.thresholds import calibrated
from cdul.core.storage import ObjectStore, open_store
from cdul.labels import out_of_fold
from cdul.trainer import checkpoint, distributed
from cdul.trainer.backbone import load_backbone
from cdul.trainer.config import TrainConfig
from cdul.trainer.data import ImageSet, TrainData, load_train_data
from cdul.trainer.distributed import DistEnv
from cdul.trainer.export import export
from cdul.trainer.plots import curves_png
from cdul.trainer.thresholds import (
    DecisionThresholds,
    describe,
    hard_pseudo_labels,
    label_free,
    one_for_all,
    val_metrics,
    val_report,
)

log = logging.getLogger("cdul.trainer")

METRICS_KEY = "training/metrics.jsonl"
CURVES_KEY = "training/curves.png"
#: The archive's per-class thresholds, how they were chosen, and (with --val ground
#: truth) the labels they give on it next to the best thresholds it would pick.
THRESHOLDS_KEY = "training/thresholds.json"
CONFIG_KEY = "training/config.json"


def autocast(device_type: str, amp: bool) -> torch.autocast | nullcontext:
    """fp16 autocast when ``amp`` (training and prediction alike), else nothing."""
    return torch.autocast(device_type, dtype=torch.float16) if amp else nullcontext()


def train_step(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    amp: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One supervised step on pseudo labels; returns (loss, logits), both detached."""
    with autocast(pixels.device.type, amp):
        logits = model(pixels)
    loss = bernoulli_kl(targets, logits.float())
    optimiser.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimiser)
    scaler.update()
    return loss.detach(), logits.detach()


class Trainer:
    def __init__(self, config: TrainConfig, env: DistEnv) -> None:
        self.config = config
        self.env = env
        cuda = env.device.type == "cuda"
        self.amp = cuda if config.amp is None else (config.amp and cuda)
        self.channels_last = cuda if config.channels_last is None else config.channels_last
        self.store: ObjectStore = open_store(config.output, create_bucket=env.is_main)
        self.data: TrainData = load_train_data(
            config.labels,
            config.images,
            config.val,
            config.label_vector,
            config.image_size,
            config.fold,
        )
        self.num_images = len(self.data.train)
        self.generator = torch.Generator().manual_seed(config.seed)
        _seed_everything(config.seed)
        module = build_classifier(config.arch, len(self.data.classes))
        self.backbone_source = self._load_backbone(module)
        module.to(env.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        self.module = module
        self.model: nn.Module = module
        if env.distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        self.optimiser = torch.optim.Adam(
            module.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.latent = to_latent(self.data.initial_labels, config.eps)
        # What the served thresholds are calibrated against (trainer/thresholds.py).
        self.hard, self.hard_source = hard_pseudo_labels(self.data.labels, config.label_vector)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0

    def _load_backbone(self, module: nn.Module) -> str:
        # Rank 0 first, so only one process fills torchvision's download cache.
        if not self.env.is_main:
            distributed.barrier(self.env)
        source = load_backbone(module, self.config.backbone_weights, self.config.arch)
        if self.env.is_main:
            distributed.barrier(self.env)
        return source

    # -- resume ----------------------------------------------------------------------

    def resume(self) -> bool:
        """Continue from the run's checkpoint if there is one; True when resumed."""
        payload = checkpoint.load(self.store)
        if payload is None:
            return False
        conflicts = self.config.resume_conflicts(payload["config"])
        if conflicts:
            raise ConfigError(
                f"{self.store.uri_for(checkpoint.CHECKPOINT_KEY)} belongs to a run with other "
                "settings (use another --output or delete it): " + "; ".join(conflicts)
            )
        if payload.get("reviews", "") != self.data.reviews_digest():  # older ones: none recorded
            where = self.store.uri_for(checkpoint.CHECKPOINT_KEY)
            raise ConfigError(f"the run's reviewed labels changed since {where} was written: "
                              "train into a new --output to learn from them")  # fmt: skip
        self.module.load_state_dict(payload["model"])
        self.optimiser.load_state_dict(payload["optimiser"])
        self.scaler.load_state_dict(payload["scaler"])
        self.latent = payload["latent"].float()
        self.history = json.loads(payload["history"])
        self.start_epoch = int(payload["epoch"])
        checkpoint.restore_rng(payload["rng"], self.generator)
        return True

    # -- one epoch ---------------------------------------------------------------------

    def _loader(self, images: ImageSet, shuffle: bool, batch_size: int) -> DataLoader:
        sampler = DistributedSampler(
            images,
            num_replicas=self.env.world_size,
            rank=self.env.rank,
            shuffle=shuffle,
            seed=self.config.seed,
        )
        return DataLoader(
            images,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.config.num_workers,
            generator=self.generator,
            pin_memory=self.env.device.type == "cuda",
            persistent_workers=False,
        )

    def _to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.env.device, non_blocking=True)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    def train_epoch(self, epoch: int) -> tuple[float, torch.Tensor]:
        """One pass; returns (mean loss over all ranks, ``(N, C)`` logits of the pass)."""
        loader = self._loader(self.data.train, shuffle=True, batch_size=self.config.batch_size)
        loader.sampler.set_epoch(epoch)
        self.model.train()
        targets = from_latent(self.latent)
        seen, kept = [], []
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.env.device)
        show = self.config.progress and self.env.is_main
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="batch",
                   disable=not show, leave=False)  # fmt: skip
        for step, (pixels, index) in enumerate(bar):
            batch_targets = targets[index].to(self.env.device, non_blocking=True)
            loss, logits = train_step(
                self.model, self.optimiser, self.scaler, self._to_device(pixels),
                batch_targets, self.amp,
            )  # fmt: skip
            # Stays on the device: no host sync per step (except for the bar, now and then).
            loss_sum += loss.double() * len(index)
            seen.append(index)
            kept.append(logits.float())
            if show and step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
        count = sum(len(index) for index in seen)
        if not math.isfinite(float(loss_sum)):
            raise FloatingPointError(f"the loss became {float(loss_sum)} in epoch {epoch + 1}")
        total_loss, total_count = distributed.sum_values(self.env, float(loss_sum), count)
        logits = distributed.gather_rows(
            self.env, torch.cat(seen), torch.cat(kept), self.num_images
        )
        return total_loss / max(total_count, 1), logits

    @torch.no_grad()
    def predict(self, images: ImageSet) -> torch.Tensor:
        """Eval-mode logits ``(len(images), C)``, identical on every rank."""
        self.model.eval()
        loader = self._loader(images, shuffle=False, batch_size=max(self.config.batch_size, 32))
        seen, kept = [], []
        for pixels, index in loader:
            with autocast(self.env.device.type, self.amp):
                logits = self.module(self._to_device(pixels))
            seen.append(index)
            kept.append(logits.float().cpu())
        return distributed.gather_rows(self.env, torch.cat(seen), torch.cat(kept), len(images))

    def _map(self, scores: torch.Tensor, truth: torch.Tensor | None) -> float | None:
        if truth is None:
            return None
        return evaluate(scores, truth, self.data.classes).mean_ap

    # -- the run -------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        config, env = self.config, self.env
        resumed = self.resume()
        if env.is_main:
            if resumed:
                log.info("resuming %s after epoch %d", config.output, self.start_epoch)
            self._write_record()
        if not self.history:
            self.history.append(
                {
                    "epoch": 0,
                    "pseudo_label_map": self._map(from_latent(self.latent), self.data.ground_truth),
                    "labels_updated": False,
                }
            )
        val_probabilities: torch.Tensor | None = None  # the last epoch's, for the threshold
        for epoch in range(self.start_epoch, config.epochs):
            started = time.perf_counter()
            loss, train_logits = self.train_epoch(epoch)
            updated = config.updates_labels_in(epoch)
            if updated:
                # "step": the logits each image got in its own training step (free; the
                # study's code); "eval": a fresh eval-mode pass of the epoch's network.
                source = (
                    self.predict(self.data.train)
                    if config.update_logits == "eval"
                    else train_logits
                )
                self.latent = align_latent(
                    self.latent, source, config.label_step, config.sigma, config.eps
                )
                # A reviewer's label is not the network's to move.
                reviewed = self.data.reviewed
                self.latent[reviewed] = to_latent(self.data.initial_labels[reviewed], config.eps)
                drift = distributed.broadcast_(env, self.latent)
                if drift > 0:
                    log.warning("rank %d: pseudo labels diverged from rank 0's by %g; "
                                "using rank 0's", env.rank, drift)  # fmt: skip
            val_map, val_labels = None, {}
            if self.data.val is not None:
                val_probabilities = torch.sigmoid(self.predict(self.data.val))
                val_map = self._map(val_probabilities, self.data.val_truth)
                # The epoch's labels on val, at label-free thresholds from the logits the
                # training images got in their steps (no extra pass; the archive's come
                # from an eval pass at the end).
                epoch_thresholds = calibrated(torch.sigmoid(train_logits), self.hard)
                val_labels = val_metrics(
                    val_probabilities, self.data.val_truth, epoch_thresholds, self.data.classes
                )
            truth = self.data.ground_truth
            row = {
                "epoch": epoch + 1,
                "loss": loss,
                "train_map": self._map(torch.sigmoid(train_logits), truth),
                "pseudo_label_map": self._map(from_latent(self.latent), truth),
                "val_map": val_map,
                **val_labels,
                "labels_updated": updated,
                "seconds": round(time.perf_counter() - started, 3),
            }
            self.history.append(row)
            if env.is_main:
                self._save(epoch + 1)
                log.info("epoch %d/%d: %s", epoch + 1, config.epochs, _summary(row))
            distributed.barrier(env)
        thresholds = self._decision_thresholds(val_probabilities)  # every rank: predict() gathers
        if env.is_main:
            keys = export(
                self.store, self.module.state_dict(), arch=config.arch,
                classes=self.data.classes, image_size=config.image_size,
                model_name=config.model_name, thresholds=thresholds, archive=config.archive,
            )  # fmt: skip
            log.info("exported %s", ", ".join(self.store.uri_for(k) for k in keys))
        if self.data.held_out is not None:
            self._write_held_out(thresholds)  # every rank: predict() gathers
        distributed.barrier(env)
        return self.history

    def _decision_thresholds(self, val_probabilities: torch.Tensor | None) -> DecisionThresholds:
        """The archive's per-class thresholds (trainer/thresholds.py; ``--threshold`` puts
        one on every class); with --val ground truth, how they compare with the best."""
        config, classes = self.config, self.data.classes
        if config.threshold is not None:
            chosen = one_for_all(config.threshold, len(classes))
        else:
            train = torch.sigmoid(self.predict(self.data.train))
            chosen = label_free(train, self.hard, self.hard_source, config.label_vector)
        report = None
        if self.data.val is not None and self.data.val_truth is not None:
            if val_probabilities is None:  # a finished run resumed: no epoch ran now
                val_probabilities = torch.sigmoid(self.predict(self.data.val))
            report = val_report(val_probabilities, self.data.val_truth, chosen.values, classes)
        if self.env.is_main:
            self.store.write_json(THRESHOLDS_KEY, describe(chosen, classes, report))
        return chosen

    def _write_held_out(self, thresholds: DecisionThresholds) -> None:
        """--hold-out: the held-out fold's probabilities with this run's thresholds."""
        assert self.data.held_out is not None and self.data.held_out_ids is not None
        probabilities = torch.sigmoid(self.predict(self.data.held_out))  # every rank
        if self.env.is_main and self.config.fold is not None:
            out_of_fold.write_held_out(self.store, self.data.held_out_ids, probabilities,
                                       thresholds.values, self.config.fold[0])  # fmt: skip
            log.info("held-out predictions: %s", self.store.uri_for(out_of_fold.HELD_OUT))

    def _write_record(self) -> None:
        manifest = self.data.labels.manifest
        record = {
            "config": self.config.to_json(),
            "backbone": self.backbone_source,
            "world_size": self.env.world_size,
            "device": str(self.env.device),
            "amp": self.amp,
            "channels_last": self.channels_last,
            "pseudo_labels": {
                k: getattr(manifest, k)
                for k in ("dataset", "clip_model", "clip_pretrained", "snippet_spec", "zeta")
            },
            "images": self.num_images,
            "code_version": __version__,
        }
        self.store.write_json(CONFIG_KEY, record)

    def _save(self, finished: int) -> None:
        """Checkpoint first, then the metrics and curves it accounts for."""
        checkpoint.save(
            self.store,
            {
                "model": self.module.state_dict(),
                "optimiser": self.optimiser.state_dict(),
                "scaler": self.scaler.state_dict(),
                "latent": self.latent,
                "epoch": finished,
                "history": json.dumps(self.history),
                "config": self.config.to_json(),
                "rng": checkpoint.rng_state(self.generator),
                "reviews": self.data.reviews_digest(),
            },
        )
        lines = "".join(json.dumps(row) + "\n" for row in self.history)
        self.store.write_text(METRICS_KEY, lines)
        title = (
            f"{self.config.arch} on {self.config.label_vector} pseudo labels, F="
            f"{self.config.update_every}, warm-up {self.config.warmup_epochs}, "
            f"step {self.config.label_step}, sigma {self.config.sigma}"
        )
        self.store.write_bytes(CURVES_KEY, curves_png(self.history, title))


def _summary(row: dict[str, Any]) -> str:
    parts = []
    for key in ("loss", "train_map", "pseudo_label_map", "val_map"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.4f}")
    if row.get("labels_updated"):
        parts.append("labels updated")
    return ", ".join(parts)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
