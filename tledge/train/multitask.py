"""``tledge multitask``: one shared backbone, one classification head per task.

The task spec is a CSV (``image,task_a,task_b,...``; image paths relative to the CSV; an
empty cell means "no label for this task") or a folder tree whose path levels are the tasks
(``--tree ROOT --levels domain,class`` reads ROOT/<domain>/<class>/*.jpg). Loss weighting is
``fixed`` (given weights) or ``uncertainty`` (Kendall et al. 2018: each task's loss scaled
by a learned exp(-s) plus s). The export carries every head as a named output.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tledge.errors import TledgeError
from tledge.runtime.images import list_images
from tledge.train import features as FT
from tledge.train.backbones import get_backbone
from tledge.train.checkpoint import Checkpoint, make_checkpoint
from tledge.train.data import LabelledImages, stratified_split
from tledge.train.distributed import Dist
from tledge.train.engine import Algorithm, Plan, Run, fit
from tledge.train.features import embed_cached
from tledge.train.losses import LinearHead
from tledge.train.report import MetricsLog

WEIGHTINGS = ("fixed", "uncertainty")


@dataclass(frozen=True)
class TaskSpec:
    """``files`` (n,) and, per task, ``labels[task]`` (n,) indices into ``names[task]``
    (-1: unlabelled for that task)."""

    files: tuple[Path, ...]
    names: dict[str, tuple[str, ...]]
    labels: dict[str, np.ndarray]

    @classmethod
    def from_csv(cls, path: Path) -> TaskSpec:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if len(rows) < 2 or len(rows[0]) < 2:
            raise TledgeError(f"{path}: expected a header 'image,task1[,task2...]' and rows")
        header, body = rows[0], rows[1:]
        files = tuple((path.parent / r[0]).resolve() for r in body)
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise TledgeError(f"{path}: {len(missing)} images not found, e.g. {missing[0]}")
        return cls._build(files, {t: [r[i] if i < len(r) else "" for r in body]
                                  for i, t in enumerate(header) if i > 0})

    @classmethod
    def from_tree(cls, root: Path, levels: list[str]) -> TaskSpec:
        files = [p for p in list_images(root)
                 if len(p.relative_to(root).parts) == len(levels) + 1]
        if not files:
            raise TledgeError(f"no images at depth {len(levels) + 1} under {root} "
                              f"(expected ROOT/{'/'.join('<' + lv + '>' for lv in levels)}/*)")
        parts = [p.relative_to(root).parts for p in files]
        return cls._build(tuple(files), {lv: [pt[i] for pt in parts]
                                         for i, lv in enumerate(levels)})

    @classmethod
    def _build(cls, files, columns: dict[str, list[str]]) -> TaskSpec:
        names, labels = {}, {}
        for task, values in columns.items():
            names[task] = tuple(sorted({v for v in values if v}))
            if len(names[task]) < 2:
                raise TledgeError(f"task {task!r} needs at least two labels, has {names[task]}")
            index = {n: i for i, n in enumerate(names[task])}
            labels[task] = np.array([index.get(v, -1) for v in values], np.int64)
        return cls(files, names, labels)


@dataclass(frozen=True)
class MultitaskConfig:
    backbone: str = "mobilenet_v2"
    unfreeze: int = 2
    epochs: int = 6
    steps_per_epoch: int = 30
    batch: int = 48
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    weighting: str = "uncertainty"
    task_weights: tuple[float, ...] = ()     # fixed weighting; default all 1
    views: int = 2
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"

    def validate(self, tasks: int) -> None:
        if self.weighting not in WEIGHTINGS:
            raise TledgeError(f"unknown weighting {self.weighting!r}; use one of {WEIGHTINGS}")
        if self.task_weights and len(self.task_weights) != tasks:
            raise TledgeError(f"{len(self.task_weights)} task weights for {tasks} tasks")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch < 2:
            raise TledgeError("epochs and steps-per-epoch must be >= 1, batch >= 2")


def multitask(spec: TaskSpec, run_dir: Path, config: MultitaskConfig,
              resume: bool = False) -> dict:
    """Train every head on the shared backbone; keep the best mean validation accuracy."""
    config.validate(len(spec.names))
    run = Run.start(run_dir, config.device, config.seed)
    try:
        algo = Multitask(spec, config, run)
        run.write_json("config.json", {**asdict(config), **algo.info})
        t0 = time.perf_counter()
        algo.prepare(run.feature_dir(None))
        cache_s = time.perf_counter() - t0
        tasks = algo.tasks
        log = MetricsLog(run_dir, losses=tuple(f"loss_{t}" for t in tasks),
                         accuracies=tuple(f"val_accuracy_{t}" for t in tasks),
                         write=run.dist.is_main)
        best = fit(algo, run, Plan(config.epochs, config.steps_per_epoch, resumable=True,
                                   desc="multitask"), log, resume)
        log.finish()
        summary = {"tasks": tasks, "best_epoch": best["epoch"],
                   **{k: v for k, v in best.items() if k.startswith("val_accuracy_")},
                   "cache_seconds": round(cache_s, 1),
                   "train_seconds": round(sum(r["seconds"] for r in log.rows), 1),
                   "run_dir": str(run_dir)}
        run.write_json("summary.json", summary)
        return summary
    finally:
        run.close()


class Multitask(Algorithm):
    """Random batches of the training items; one classification loss per task, weighted
    (fixed or learned uncertainty); selection by mean validation accuracy."""

    unused_parameters = True    # a task without labels in a batch leaves its head idle

    def __init__(self, spec: TaskSpec, config: MultitaskConfig, run: Run) -> None:
        self.spec, self.c, self.run, self.device = spec, config, run, run.device
        self.tasks = list(spec.names)
        strat = spec.labels[self.tasks[0]].copy()
        strat[strat < 0] = strat.max() + 1
        self.train_idx, self.val_idx = stratified_split(strat, config.val_fraction, config.seed)
        self.backbone, self.bspec, weights_source = get_backbone(config.backbone, training=True)
        self.backbone.to(self.device).eval()
        self.start = FT.trainable_start(self.backbone, "partial", config.unfreeze)
        self.params = FT.set_trainable(self.backbone, self.start)
        self.warmup_steps, self.weight_decay = config.steps_per_epoch, config.weight_decay
        self.info = {"tasks": {t: list(n) for t, n in spec.names.items()},
                     "images": len(spec.files), "train_images": len(self.train_idx),
                     "val_images": len(self.val_idx), "weights_source": weights_source}

    def prepare(self, cache_dir: Path | None) -> None:
        """Cache the trunk's outputs, then build the heads (after the caches, as the seeded
        initialisation always was)."""
        items = LabelledImages(("item",), self.spec.files, np.arange(len(self.spec.files)))

        def cache(idx, views, augment, desc):
            key = [self.c.backbone, None, self.start, views, augment, self.c.seed, "items",
                   [str(f) for f in items.subset(idx).files]]
            return FT.shared_views(self.run.dist, cache_dir, key, lambda: FT.cache_views(
                self.backbone, self.start, items.subset(idx), views, augment, self.device,
                self.c.seed, desc))

        self.views = cache(self.train_idx, self.c.views, True, "training views")
        self.train = cache(self.train_idx, 1, False, "training")
        self.val = cache(self.val_idx, 1, False, "validation")
        self.heads = nn.ModuleDict({t: LinearHead(self.backbone.dim, len(self.spec.names[t]))
                                    for t in self.tasks}).to(self.device)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks), device=self.device))
        self.weights = torch.tensor(self.c.task_weights or [1.0] * len(self.tasks))
        self.rng = np.random.default_rng(self.c.seed)

    def modules(self) -> dict[str, nn.Module]:
        holder = nn.Module()
        holder.log_vars = self.log_vars  # a bare parameter needs a module for DDP and last.pt
        return {"model": self.backbone, "heads": self.heads, "weighting": holder}

    def param_groups(self) -> list[dict]:
        groups = [{"params": list(self.heads.parameters()), "lr": self.c.lr},
                  {"params": self.params, "lr": self.c.lr * self.c.backbone_lr_mult}]
        if self.c.weighting == "uncertainty":
            groups.append({"params": [self.log_vars], "lr": self.c.lr, "weight_decay": 0.0})
        return groups

    def train_mode(self) -> None:
        self.backbone.train()
        FT.freeze_batchnorm(self.backbone)

    def labels_of(self, part: FT.CachedViews, task: str) -> np.ndarray:
        return self.spec.labels[task][part.labels]  # cached labels are item indices

    def batches(self, epoch: int, dist: Dist):
        """Each step's global batch drawn alike on every rank, each rank taking its part."""
        for _ in range(self.c.steps_per_epoch):
            idx = dist.shard(self.rng.integers(0, len(self.views.x), self.c.batch))
            yield self.views.x[idx], {t: self.labels_of(self.views, t)[idx] for t in self.tasks}

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, labels = batch
        feats = self.backbone.forward_from(x.to(self.device), self.start)
        losses = []
        for t in self.tasks:
            y = torch.as_tensor(labels[t], device=self.device)
            mask = y >= 0
            losses.append(self.heads[t].loss(feats[mask], y[mask]) if mask.any()
                          else feats.sum() * 0)
        stacked = torch.stack(losses)
        if self.c.weighting == "uncertainty":
            loss = (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()
        else:
            loss = (self.weights.to(self.device) * stacked).sum()
        return loss, {f"loss_{t}": float(v) for t, v in zip(self.tasks, stacked.tolist())}

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict:
        self.backbone.eval()
        feats = embed_cached(self._pooled, self.val.x)
        row = {}
        for t in self.tasks:
            y = self.labels_of(self.val, t)
            keep = y >= 0
            pred = self.heads[t].logits(feats[keep].to(self.device)).argmax(1)
            row[f"val_accuracy_{t}"] = (float((pred.cpu().numpy() == y[keep]).mean())
                                        if keep.any() else float("nan"))
        if self.c.weighting == "uncertainty":
            row.update({f"weight_{t}": float(torch.exp(-self.log_vars[i]))
                        for i, t in enumerate(self.tasks)})
        return row

    def score(self, row: dict) -> float:
        return float(np.mean([row[f"val_accuracy_{t}"] for t in self.tasks]))

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_from(x.to(self.device), self.start)

    def checkpoint(self) -> Checkpoint:
        first, names = self.tasks[0], self.spec.names
        tr = (embed_cached(self._pooled, self.train.x), self.labels_of(self.train, first))
        va = (embed_cached(self._pooled, self.val.x), self.labels_of(self.val, first))
        keep_tr, keep_va = tr[1] >= 0, va[1] >= 0
        return make_checkpoint("multitask", asdict(self.c), self.bspec.name,
                               list(names[first]), self.backbone,
                               {t: (list(names[t]), self.heads[t].fc) for t in self.tasks},
                               tr[0].mean(0), (tr[0][keep_tr], tr[1][keep_tr]),
                               (va[0][keep_va], va[1][keep_va]))
