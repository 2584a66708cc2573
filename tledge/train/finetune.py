"""``tledge finetune``: adapt a pretrained backbone to a class-per-folder dataset.

The run skeleton (``tledge.train.engine``) does the rest; this module supplies the batches
(class-balanced episodes), the loss and the validation.

Modes: ``head`` (frozen backbone, linear probe), ``partial`` (last N stages), ``full`` (all,
the backbone at a lower learning rate). Objectives: ``ce`` (classification with label
smoothing), and for one-shot enrollment of unseen classes ``proto`` (episodic prototypical),
``supcon`` (supervised contrastive) and ``cosface`` (large-margin cosine).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tledge.errors import TledgeError, suggest
from tledge.train import features as FT
from tledge.train.backbones import get_backbone
from tledge.train.checkpoint import Checkpoint, make_checkpoint
from tledge.train.data import (
    EpisodeSampler,
    ImageDataset,
    LabelledImages,
    class_split,
    load_batch,
    stratified_split,
    train_transform,
)
from tledge.train.distributed import Dist
from tledge.train.engine import Algorithm, Plan, Run, fit
from tledge.train.losses import OBJECTIVES, CosFaceHead, LinearHead, prototypical_loss, supcon_loss
from tledge.train.protos import compute_prototypes, ncm_predict
from tledge.train.report import MetricsLog, plot_confusion

MODES = ("head", "partial", "full")


@dataclass(frozen=True)
class FinetuneConfig:
    backbone: str = "mobilenet_v2"
    mode: str = "partial"
    unfreeze: int = 2
    objective: str = "proto"
    epochs: int = 12
    steps_per_epoch: int = 40
    lr: float = 1e-4
    backbone_lr_mult: float = 0.1     # full mode: the pretrained stages learn 10x slower
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    way: int = 16                     # classes per batch (all objectives sample by class)
    shot: int = 4                     # images per class in a batch (proto: support shots)
    query: int = 4                    # proto only: queries per class
    views: int = 2                    # augmented views cached per image (head/partial)
    anchor: float = 1.0               # weight of 1 - cos(new, pretrained embedding): keeps
                                      # what ImageNet taught while adapting (0 disables)
    val_fraction: float = 0.2
    patience: int = 4
    seed: int = 0
    device: str = "auto"
    weights: str | None = None

    def validate(self) -> None:
        if self.mode not in MODES:
            raise TledgeError(f"unknown mode {self.mode!r}." + suggest(self.mode, MODES))
        if self.objective not in OBJECTIVES:
            raise TledgeError(f"unknown objective {self.objective!r}."
                              + suggest(self.objective, OBJECTIVES))
        if self.mode == "head" and self.objective != "ce":
            raise TledgeError("--mode head trains only a classifier over frozen features; "
                              "metric objectives need --mode partial or full")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.way < 2 or self.shot < 1:
            raise TledgeError("epochs, steps-per-epoch and shot must be >= 1 and way >= 2")


FIELDS = ("epoch", "train_loss", "val_accuracy", "val_head_accuracy", "lr", "seconds")


def finetune(data_root: Path, run_dir: Path, config: FinetuneConfig, resume: bool = False) -> dict:
    """Train, keep the best checkpoint by validation accuracy, write the run directory."""
    config.validate()
    data = LabelledImages.scan(data_root)
    if len(data.classes) < 2:
        raise TledgeError(f"{data_root} needs at least two class folders")
    run = Run.start(run_dir, config.device, config.seed)
    try:
        algo = Finetune(config, data, run)
        run.write_json("config.json", {**asdict(config), "data": str(data_root), **algo.info})
        algo.prepare()
        log = MetricsLog(run_dir, FIELDS, ("train_loss",), ("val_accuracy", "val_head_accuracy"),
                         write=run.dist.is_main)
        plan = Plan(config.epochs, config.steps_per_epoch, baseline=True,
                    baseline_selectable=True, patience=config.patience, resumable=True)
        best = fit(algo, run, plan, log, resume)
        log.finish({"val_accuracy": "nearest class mean", "val_head_accuracy": "classifier head"})
        if run.dist.is_main and best.get("_confusion") is not None and best["_confusion"].size:
            plot_confusion(best["_confusion"], list(algo.data.classes), run_dir / "confusion.png")
        return {"best_epoch": best["epoch"], "best_val_accuracy": Finetune.selection(best),
                "epochs_run": len(log.rows),
                "train_seconds": float(sum(r["seconds"] for r in log.rows)),
                "run_dir": str(run_dir)}
    finally:
        run.close()


def _make_head(objective: str, dim: int, classes: int) -> torch.nn.Module:
    if objective == "ce":
        return LinearHead(dim, classes)
    if objective == "cosface":
        return CosFaceHead(dim, classes)
    return torch.nn.Module()  # proto and supcon train the embedding alone


class Finetune(Algorithm):
    """Episodes of the training classes through the trainable stages (cached trunk outputs,
    or images in full mode); validation by nearest class mean."""

    def __init__(self, config: FinetuneConfig, data: LabelledImages, run: Run) -> None:
        self.c, self.data, self.run, self.device = config, data, run, run.device
        # Metric objectives exist to embed unseen classes well, so they are validated on
        # classes held out of training; ``ce`` on held-out images of its own classes.
        self.disjoint = config.objective != "ce"
        splitter = class_split if self.disjoint else stratified_split
        train_idx, val_idx = splitter(data.labels, config.val_fraction, config.seed)
        self.train, self.val = data.subset(train_idx), data.subset(val_idx)
        self.backbone, self.spec, source = get_backbone(config.backbone, weights=config.weights,
                                                                 training=True)
        self.backbone.to(self.device)
        self.start = FT.trainable_start(self.backbone, config.mode, config.unfreeze)
        self.params = FT.set_trainable(self.backbone, self.start)
        self.head = _make_head(config.objective, self.backbone.dim,
                               len(data.classes)).to(self.device)
        self.warmup_steps = int(config.warmup_epochs * config.steps_per_epoch)
        self.weight_decay = config.weight_decay
        self.info = {"classes": list(data.classes), "weights_source": source,
                     "train_images": len(self.train.files), "val_images": len(self.val.files)}

    def prepare(self) -> None:
        """Cache the frozen trunk's outputs (head/partial) and the pretrained anchors."""
        if self.start > 0:
            self.backbone.eval()
            folder = self.run.feature_dir(None)

            def cache(part, views, augment):
                key = [self.c.backbone, self.c.weights, self.start, views, augment,
                       self.c.seed, "pretrained", [str(f) for f in part.files]]
                return FT.shared_views(self.run.dist, folder, key, lambda: FT.cache_views(
                    self.backbone, self.start, part, views, augment, self.device, self.c.seed))

            self.source = cache(self.train, self.c.views, True)
            self.train_clean, self.val_clean = cache(self.train, 1, False), cache(self.val, 1,
                                                                                  False)
        else:  # full mode decodes images each step
            self.source, self.train_clean, self.val_clean = self.train, self.train, self.val
        if self.c.anchor:  # the pretrained embeddings (a resume loads trained weights later)
            self.frozen = copy.deepcopy(self.backbone).eval()
            if isinstance(self.source, FT.CachedViews):
                self.source.anchor, _ = self.embed(self.source)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.backbone, "head": self.head}

    def param_groups(self) -> list[dict]:
        groups = [{"params": list(self.head.parameters()), "lr": self.c.lr}]
        if self.params:
            mult = self.c.backbone_lr_mult if self.c.mode == "full" else 1.0
            groups.append({"params": self.params, "lr": self.c.lr * mult})
        return groups

    def train_mode(self) -> None:
        self.backbone.train()
        FT.freeze_batchnorm(self.backbone)

    def batches(self, epoch: int, dist: Dist):
        """Episodes: each step's global batch is one episode per rank, drawn from one
        sampler seeded by epoch (the same on every rank); rank r takes the r-th."""
        query = self.c.query if self.c.objective == "proto" else 0
        labels = self.source.labels
        sampler = EpisodeSampler(labels, min(self.c.way, len(np.unique(labels))), self.c.shot,
                                 query, self.c.steps_per_epoch * dist.world,
                                 self.c.seed * 1000 + epoch)
        mine = islice(sampler, dist.rank, None, dist.world)
        if isinstance(self.source, FT.CachedViews):
            anchors = self.source.anchor
            for idx in mine:
                yield (self.source.x[idx], torch.as_tensor(labels[idx]),
                       anchors[idx] if anchors is not None else None)
        else:
            ds = ImageDataset(self.source, train_transform(self.backbone.preprocess))
            for idx in mine:
                items = [ds[i] for i in idx]
                yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]), None

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y, anchor = batch
        pooled = self._pooled(x)
        obj, y = self.c.objective, y.to(self.device)
        if obj in ("ce", "cosface"):
            loss = self.head.loss(pooled, y)
        elif obj == "proto":
            loss = prototypical_loss(pooled, y, self.c.shot)
        else:
            loss = supcon_loss(pooled, y)
        if self.c.anchor:
            if anchor is None:
                with torch.no_grad():
                    anchor = self.frozen.forward_from(x.to(self.device), self.start)
            drift = (1.0 - F.cosine_similarity(pooled, anchor.to(pooled.device), dim=1)).mean()
            loss = loss + self.c.anchor * drift
        return loss, {"train_loss": loss.item()}

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_from(x.to(self.device), self.start)

    @staticmethod
    def selection(row: dict) -> float:
        """The classifier head's accuracy when there is one, else nearest class mean."""
        head = row["val_head_accuracy"]
        return head if head not in ("", None) else row["val_accuracy"]

    def score(self, row: dict) -> float:
        return self.selection(row)

    def evaluate(self, epoch: int) -> dict:
        acc, confusion, ce_acc = self.validate()
        row = {"val_accuracy": acc, "val_head_accuracy": "" if ce_acc is None else ce_acc,
               "_confusion": confusion}
        return {"train_loss": float("nan"), "lr": 0.0, **row} if epoch < 0 else row

    @torch.no_grad()
    def embed(self, source) -> tuple[torch.Tensor, np.ndarray]:
        """(pooled features (n, dim), labels) of clean views."""
        self.backbone.eval()
        if isinstance(source, FT.CachedViews):
            step = FT.CACHE_BATCH * 4
            parts = [self._pooled(source.x[i:i + step]) for i in range(0, len(source.x), step)]
            return torch.cat(parts).float().cpu(), source.labels
        files, step, cfg = list(source.files), FT.CACHE_BATCH, self.backbone.preprocess
        parts = [self.backbone.forward_features(load_batch(files[i:i + step], cfg).to(self.device))
                 for i in range(0, len(files), step)]
        return torch.cat(parts).float().cpu(), source.labels

    def validate(self) -> tuple[float, np.ndarray, float | None]:
        """Nearest-class-mean accuracy of validation images, the confusion matrix and (ce)
        the classifier's accuracy. Held-out classes: all-way 1-shot among themselves."""
        va, va_y = self.embed(self.val_clean)
        if self.disjoint:
            return _one_shot(va, va_y), np.zeros((0, 0), np.int64), None
        tr, tr_y = self.embed(self.train_clean)
        protos = compute_prototypes(tr, tr_y)
        pred = ncm_predict(protos, va)
        n = int(protos[0].max()) + 1
        confusion = np.zeros((n, n), np.int64)
        np.add.at(confusion, (va_y, pred), 1)
        ce_acc = None
        if self.c.objective == "ce":
            head_pred = self.head.logits(va.to(self.device)).argmax(1).cpu().numpy()
            ce_acc = float((head_pred == va_y).mean())
        return float((pred == va_y).mean()), confusion, ce_acc

    def checkpoint(self) -> Checkpoint:
        train, val = self.embed(self.train_clean), self.embed(self.val_clean)
        heads = {"classes": (list(self.data.classes), self.head.fc)} \
            if self.c.objective == "ce" else {}
        return make_checkpoint("finetune", asdict(self.c), self.spec.name,
                               list(self.data.classes), self.backbone, heads,
                               train[0].mean(0), train, val, self.disjoint)


def _one_shot(emb: torch.Tensor, labels: np.ndarray, episodes: int = 20) -> float:
    """All-way 1-shot accuracy over the held-out classes, averaged over seeded draws."""
    z = F.normalize(emb, dim=1)
    classes = np.unique(labels)
    rng = np.random.default_rng(0)
    accs = []
    for _ in range(episodes):
        support = np.array([rng.choice(np.flatnonzero(labels == c)) for c in classes])
        query = np.setdiff1d(np.arange(len(labels)), support)
        pred = classes[(z[query] @ z[support].T).argmax(1).numpy()]
        accs.append(float((pred == labels[query]).mean()))
    return float(np.mean(accs))
