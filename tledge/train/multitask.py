"""``tledge multitask``: one shared backbone, one classification head per task.

The task spec is a CSV (``image,task_a,task_b,...``; image paths relative to the CSV; an
empty cell means "no label for this task") or a folder tree whose path levels are the tasks
(``--tree ROOT --levels domain,class`` reads ROOT/<domain>/<class>/*.jpg). Loss weighting is
``fixed`` (given weights) or ``uncertainty`` (Kendall et al. 2018: each task's loss scaled
by a learned exp(-s) plus s). The export carries every head as a named output.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tledge.errors import TledgeError
from tledge.runtime.images import list_images
from tledge.train import features as FT
from tledge.train.backbones import get_backbone
from tledge.train.data import LabelledImages, stratified_split
from tledge.train.finetune import pick_device, schedule
from tledge.train.losses import LinearHead
from tledge.train.runs import embed_cached, save_checkpoint

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


def multitask(spec: TaskSpec, run_dir: Path, config: MultitaskConfig) -> dict:
    """Train every head on the shared backbone; keep the best mean validation accuracy."""
    tasks = list(spec.names)
    config.validate(len(tasks))
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    strat = spec.labels[tasks[0]].copy()
    strat[strat < 0] = strat.max() + 1
    train_idx, val_idx = stratified_split(strat, config.val_fraction, config.seed)
    items = LabelledImages(("item",), spec.files, np.arange(len(spec.files)))
    backbone, bspec, weights_source = get_backbone(config.backbone)
    backbone.to(device).eval()
    start = FT.trainable_start(backbone, "partial", config.unfreeze)
    params = FT.set_trainable(backbone, start)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(
        {**asdict(config), "tasks": {t: list(n) for t, n in spec.names.items()},
         "images": len(spec.files), "train_images": len(train_idx),
         "val_images": len(val_idx), "weights_source": weights_source}, indent=2))
    t0 = time.perf_counter()
    views = FT.cache_views(backbone, start, items.subset(train_idx), config.views, True, device,
                           config.seed, "training views")
    train = FT.cache_views(backbone, start, items.subset(train_idx), 1, False, device,
                           config.seed, "training")
    val = FT.cache_views(backbone, start, items.subset(val_idx), 1, False, device, config.seed,
                         "validation")
    cache_s = time.perf_counter() - t0
    heads = nn.ModuleDict({t: LinearHead(backbone.dim, len(spec.names[t])) for t in tasks})
    log_vars = nn.Parameter(torch.zeros(len(tasks)))
    heads.to(device)
    groups = [{"params": list(heads.parameters()), "lr": config.lr},
              {"params": params, "lr": config.lr * config.backbone_lr_mult}]
    if config.weighting == "uncertainty":
        groups.append({"params": [log_vars], "lr": config.lr, "weight_decay": 0.0})
    optim = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    total = config.epochs * config.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(optim, schedule(total, config.steps_per_epoch))
    weights = torch.tensor(config.task_weights or [1.0] * len(tasks))
    rng = np.random.default_rng(config.seed)

    def pooled(x):
        return backbone.forward_from(x.to(device), start)

    def labels_of(part, task):
        return spec.labels[task][part.labels]  # cached labels are item indices

    rows, best = [], -1.0
    for epoch in tqdm(range(config.epochs), desc="multitask", disable=None):
        t1 = time.perf_counter()
        backbone.train()
        FT.freeze_batchnorm(backbone)
        sums = np.zeros(len(tasks))
        for _ in range(config.steps_per_epoch):
            idx = rng.integers(0, len(views.x), config.batch)
            feats = pooled(views.x[idx])
            losses = []
            for t in tasks:
                y = torch.as_tensor(labels_of(views, t)[idx], device=device)
                mask = y >= 0
                losses.append(heads[t].loss(feats[mask], y[mask]) if mask.any()
                              else feats.sum() * 0)
            stacked = torch.stack(losses)
            if config.weighting == "uncertainty":
                loss = (torch.exp(-log_vars) * stacked + log_vars).sum()
            else:
                loss = (weights.to(device) * stacked).sum()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            sums += stacked.detach().cpu().numpy()
        accs = _accuracies(heads, pooled, val, tasks, labels_of, backbone)
        row = {"epoch": epoch, "seconds": round(time.perf_counter() - t1, 2),
               **{f"loss_{t}": float(sums[i] / config.steps_per_epoch)
                  for i, t in enumerate(tasks)},
               **{f"val_accuracy_{t}": a for t, a in accs.items()},
               **{f"weight_{t}": float(torch.exp(-log_vars[i]).detach())
                  for i, t in enumerate(tasks) if config.weighting == "uncertainty"}}
        rows.append(row)
        _write_csv(run_dir / "metrics.csv", rows)
        mean_acc = float(np.mean(list(accs.values())))
        if mean_acc > best:
            best, best_row = mean_acc, row
            first = tasks[0]
            tr = (embed_cached(pooled, train.x), labels_of(train, first))
            va = (embed_cached(pooled, val.x), labels_of(val, first))
            keep_tr, keep_va = tr[1] >= 0, va[1] >= 0
            save_checkpoint(run_dir / "best.pt", "multitask", asdict(config), bspec.name,
                            list(spec.names[first]), backbone,
                            {t: (list(spec.names[t]), heads[t].fc) for t in tasks},
                            tr[0].mean(0), (tr[0][keep_tr], tr[1][keep_tr]),
                            (va[0][keep_va], va[1][keep_va]))
    summary = {"tasks": tasks, "best_epoch": best_row["epoch"],
               **{k: v for k, v in best_row.items() if k.startswith("val_accuracy_")},
               "cache_seconds": round(cache_s, 1),
               "train_seconds": round(sum(r["seconds"] for r in rows), 1),
               "run_dir": str(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def _accuracies(heads, pooled, val, tasks, labels_of, backbone) -> dict[str, float]:
    backbone.eval()
    feats = embed_cached(pooled, val.x)
    out = {}
    for t in tasks:
        y = labels_of(val, t)
        keep = y >= 0
        pred = heads[t].logits(feats[keep].to(next(heads.parameters()).device)).argmax(1)
        out[t] = float((pred.cpu().numpy() == y[keep]).mean()) if keep.any() else float("nan")
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(rows)
