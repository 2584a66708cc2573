"""``tledge finetune``: adapt a pretrained backbone to a class-per-folder dataset.

Modes: ``head`` (frozen backbone, linear probe), ``partial`` (last N stages), ``full`` (all,
the backbone at a lower learning rate). Objectives: ``ce`` (classification with label
smoothing), and for one-shot enrollment of unseen classes ``proto`` (episodic prototypical),
``supcon`` (supervised contrastive) and ``cosface`` (large-margin cosine).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tledge.errors import TledgeError, suggest
from tledge.train import features as FT
from tledge.train.backbones import get_backbone
from tledge.train.data import LabelledImages, class_split, stratified_split
from tledge.train.losses import OBJECTIVES, CosFaceHead, LinearHead, prototypical_loss, supcon_loss
from tledge.train.report import RunLog
from tledge.train.runs import save_checkpoint

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


def open_set_threshold(train, val, center, disjoint: bool, far: float = 0.05) -> float:
    """Open-set threshold accepting ``far`` of impostors: validation embeddings scored
    against the prototypes of the other classes (held-out classes: among themselves).
    ``train`` and ``val`` are (pooled features (n, dim), labels (n,))."""
    va, va_y = val
    protos_x, protos_y = val if disjoint else train

    def unit(x):
        return F.normalize(x - center if center is not None else x, dim=1)

    classes = np.unique(protos_y)
    protos = F.normalize(torch.stack([unit(protos_x[protos_y == c]).mean(0)
                                      for c in classes]), dim=1)
    scores = (unit(va) @ protos.T).numpy()
    scores[np.arange(len(va_y)), np.searchsorted(classes, va_y)] = -np.inf
    return float(np.quantile(scores.max(1), 1.0 - far))


def schedule(total_steps: int, warmup_steps: int):
    """Linear warm-up then cosine decay, as a LambdaLR factor."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TledgeError("--device cuda was requested but torch sees no CUDA device")
    return torch.device(name)


def finetune(data_root: Path, run_dir: Path, config: FinetuneConfig, resume: bool = False) -> dict:
    """Train, keep the best checkpoint by validation accuracy, write the run directory."""
    config.validate()
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    data = LabelledImages.scan(data_root)
    if len(data.classes) < 2:
        raise TledgeError(f"{data_root} needs at least two class folders")
    # Metric objectives exist to embed unseen classes well, so they are validated on classes
    # held out of training; ``ce`` is validated on held-out images of its own classes.
    disjoint = config.objective != "ce"
    splitter = class_split if disjoint else stratified_split
    train_idx, val_idx = splitter(data.labels, config.val_fraction, config.seed)
    train, val = data.subset(train_idx), data.subset(val_idx)
    backbone, spec, source = get_backbone(config.backbone, weights=config.weights)
    backbone.to(device)
    start = FT.trainable_start(backbone, config.mode, config.unfreeze)
    params = FT.set_trainable(backbone, start)
    head = _make_head(config.objective, backbone.dim, len(data.classes)).to(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(
        {**asdict(config), "data": str(data_root), "classes": list(data.classes),
         "weights_source": source, "train_images": len(train.files),
         "val_images": len(val.files)}, indent=2))
    cached = start > 0
    if cached:
        backbone.eval()
        def cache(part, views, augment):
            return FT.cache_views(backbone, start, part, views, augment, device, config.seed)

        train_views = cache(train, config.views, True)
        train_clean, val_clean = cache(train, 1, False), cache(val, 1, False)
    else:
        train_views = train_clean = val_clean = None  # full mode decodes images each step
    groups = [{"params": list(head.parameters()), "lr": config.lr}]
    if params:
        mult = config.backbone_lr_mult if config.mode == "full" else 1.0
        groups.append({"params": params, "lr": config.lr * mult})
    optim = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    total = config.epochs * config.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, schedule(total, int(config.warmup_epochs * config.steps_per_epoch)))
    trainer = _Trainer(config, backbone, head, start, device, optim, sched, disjoint)
    log = RunLog(run_dir)
    source_data = train_views if cached else train
    if config.anchor:  # before a resume loads trained weights: anchors are the pretrained ones
        trainer.anchors(source_data)
    first_epoch = trainer.load(run_dir / "last.pt", log) if resume else 0
    if first_epoch == 0:  # the pretrained model is the baseline to beat (epoch -1)
        acc, confusion, ce_acc = trainer.validate(train_clean or train, val_clean or val)
        if log.add(-1, float("nan"), acc, ce_acc, 0.0, 0.0, confusion):
            trainer.save_best(run_dir / "best.pt", data.classes, spec.name, train_clean or train,
                              val_clean or val)
    bar = tqdm(range(first_epoch, config.epochs), desc="epochs", disable=None)
    for epoch in bar:
        t0 = time.perf_counter()
        loss = trainer.epoch(source_data, epoch)
        acc, confusion, ce_acc = trainer.validate(train_clean or train, val_clean or val)
        improved = log.add(epoch, loss, acc, ce_acc, optim.param_groups[0]["lr"],
                           time.perf_counter() - t0, confusion)
        bar.set_postfix(loss=f"{loss:.3f}", val_acc=f"{acc:.3f}")
        if improved:
            trainer.save_best(run_dir / "best.pt", data.classes, spec.name, train_clean or train,
                              val_clean or val)
        trainer.save_last(run_dir / "last.pt", epoch, log)
        if log.stale_epochs() >= config.patience:
            break
    log.finish(data.classes)
    return log.summary()


def _make_head(objective: str, dim: int, classes: int) -> torch.nn.Module:
    if objective == "ce":
        return LinearHead(dim, classes)
    if objective == "cosface":
        return CosFaceHead(dim, classes)
    return torch.nn.Module()  # proto and supcon train the embedding alone


class _Trainer:
    """One model's steps, validation and checkpoints; cached or image-based inputs."""

    def __init__(self, config, backbone, head, start, device, optim, sched, disjoint) -> None:
        self.c, self.backbone, self.head, self.start = config, backbone, head, start
        self.disjoint = disjoint
        self.device, self.optim, self.sched = device, optim, sched
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_from(x.to(self.device), self.start)

    def anchors(self, source) -> None:
        """Remember the pretrained embedding of every training input (before any step)."""
        import copy

        self.frozen = copy.deepcopy(self.backbone).eval()
        if isinstance(source, FT.CachedViews):
            source.anchor, _ = self.embed(source)

    def _anchor_loss(self, pooled: torch.Tensor, x: torch.Tensor, anchor) -> torch.Tensor:
        if anchor is None:
            with torch.no_grad():
                anchor = self.frozen.forward_from(x.to(self.device), self.start)
        return (1.0 - F.cosine_similarity(pooled, anchor.to(pooled.device), dim=1)).mean()

    def _loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        obj = self.c.objective
        if obj in ("ce", "cosface"):
            return self.head.loss(pooled, labels)
        if obj == "proto":
            return prototypical_loss(pooled, labels, self.c.shot)
        return supcon_loss(pooled, labels)

    def _batches(self, source, epoch: int):
        from tledge.train.data import EpisodeSampler, ImageDataset, train_transform

        query = self.c.query if self.c.objective == "proto" else 0
        labels = source.labels
        sampler = EpisodeSampler(labels, min(self.c.way, len(np.unique(labels))), self.c.shot,
                                 query, self.c.steps_per_epoch, self.c.seed * 1000 + epoch)
        if isinstance(source, FT.CachedViews):
            for idx in sampler:
                anchor = source.anchor[idx] if source.anchor is not None else None
                yield source.x[idx], torch.as_tensor(labels[idx]), anchor
        else:
            ds = ImageDataset(source, train_transform(FT.backbone_cfg(self.backbone)))
            for idx in sampler:
                items = [ds[i] for i in idx]
                yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]), None

    def epoch(self, source, epoch: int) -> float:
        self.backbone.train()
        FT.freeze_batchnorm(self.backbone)
        losses = []
        for x, y, anchor in self._batches(source, epoch):
            with torch.autocast(self.device.type, enabled=self.amp):
                pooled = self._pooled(x)
                loss = self._loss(pooled, y.to(self.device))
                if self.c.anchor:
                    loss = loss + self.c.anchor * self._anchor_loss(pooled, x, anchor)
            self.optim.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
            self.sched.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    @torch.no_grad()
    def embed(self, source) -> tuple[torch.Tensor, np.ndarray]:
        """(pooled features (n, dim), labels) of clean views."""
        self.backbone.eval()
        if isinstance(source, FT.CachedViews):
            step = FT.CACHE_BATCH * 4
            parts = [self._pooled(source.x[i:i + step]) for i in range(0, len(source.x), step)]
            return torch.cat(parts).float().cpu(), source.labels
        from tledge.train.data import load_batch

        cfg = FT.backbone_cfg(self.backbone)
        files = list(source.files)
        step = FT.CACHE_BATCH
        parts = [self.backbone.forward_features(load_batch(files[i:i + step], cfg).to(self.device))
                 for i in range(0, len(files), step)]
        return torch.cat(parts).float().cpu(), source.labels

    def validate(self, train_src, val_src) -> tuple[float, np.ndarray, float | None]:
        """Nearest-class-mean accuracy of validation images.

        Held-out classes: half of each class's images are its prototype, the rest queries.
        Held-out images: prototypes from the training images.
        """
        va, va_y = self.embed(val_src)
        if self.disjoint:
            return self._one_shot(va, va_y), np.zeros((0, 0), np.int64), None
        tr, tr_y = self.embed(train_src)
        classes = np.unique(tr_y)
        protos = F.normalize(torch.stack([F.normalize(tr[tr_y == c], dim=1).mean(0)
                                          for c in classes]), dim=1)
        pred = classes[(F.normalize(va, dim=1) @ protos.T).argmax(1).numpy()]
        n = int(classes.max()) + 1
        confusion = np.zeros((n, n), np.int64)
        np.add.at(confusion, (va_y, pred), 1)
        ce_acc = None
        if self.c.objective == "ce" and not self.disjoint:
            head_pred = self.head.logits(va.to(self.device)).argmax(1).cpu().numpy()
            ce_acc = float((head_pred == va_y).mean())
        return float((pred == va_y).mean()), confusion, ce_acc

    @staticmethod
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

    def save_best(self, path: Path, classes, backbone_name: str, train_src, val_src) -> None:
        train, val = self.embed(train_src), self.embed(val_src)  # once, for all three uses
        heads = {"classes": (list(classes), self.head.fc)} if self.c.objective == "ce" else {}
        save_checkpoint(path, "finetune", asdict(self.c), backbone_name, list(classes),
                        self.backbone, heads, train[0].mean(0), train, val, self.disjoint)

    def save_last(self, path: Path, epoch: int, log: RunLog) -> None:
        torch.save({"epoch": epoch, "model": self.backbone.state_dict(),
                    "head": self.head.state_dict(), "optim": self.optim.state_dict(),
                    "sched": self.sched.state_dict(), "history": log.rows}, path)

    def load(self, path: Path, log: RunLog) -> int:
        if not path.is_file():
            raise TledgeError(f"cannot resume: {path} not found")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.backbone.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        log.rows = list(state["history"])
        return int(state["epoch"]) + 1
