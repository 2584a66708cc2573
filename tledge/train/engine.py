"""One run skeleton for every training algorithm (finetune, adapt, multitask, the int8
distillation): device and process group, seeds, the run directory and ``config.json``,
AdamW with warm-up + cosine schedule, mixed precision on CUDA, DDP, the metrics log,
checkpoint selection, early stopping, ``--resume`` and the checkpoint files.

An algorithm (a subclass of ``Algorithm``, as easyfsl gives each method one base class)
supplies only what differs: its modules and parameter groups, its batches, its loss and its
evaluation. ``Trainer`` runs steps; ``fit`` runs epochs around it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tledge.train import checkpoint as C
from tledge.train.distributed import Dist
from tledge.train.report import MetricsLog


def schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay, as a LambdaLR factor."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


@dataclass
class Run:
    """Where a run happens: its directory (written by rank 0 only), process group, device."""

    run_dir: Path | None
    dist: Dist
    device: torch.device

    @classmethod
    def start(cls, run_dir: Path | None, device: str, seed: int) -> Run:
        """Join torchrun's process group if there is one, pick the device, seed torch."""
        dist, dev = Dist.from_env(device)
        torch.manual_seed(seed)
        if run_dir is not None and dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        return cls(run_dir, dist, dev)

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda"

    def feature_dir(self, cache_dir: Path | None) -> Path | None:
        """Where frozen-trunk features are kept: ``cache_dir`` when given; under torchrun
        without one, a folder in the run directory that ``close`` removes."""
        if cache_dir is not None or self.dist.world == 1 or self.run_dir is None:
            return cache_dir
        return self.run_dir / ".features"

    def close(self) -> None:
        """Remove the run's own feature folder and leave the process group."""
        self.dist.barrier()
        if self.run_dir is not None and self.dist.is_main:
            shutil.rmtree(self.run_dir / ".features", ignore_errors=True)
        self.dist.close()

    def write_json(self, name: str, values: dict) -> None:
        if self.run_dir is not None and self.dist.is_main:
            (self.run_dir / name).write_text(json.dumps(values, indent=2))


class Algorithm:
    """What a training method supplies. Modules are built in the subclass's ``__init__``."""

    warmup_steps = 0
    weight_decay = 0.0
    amp = True            # mixed precision when the run is on CUDA
    unused_parameters = False   # some trained parameters may get no gradient in a step

    def modules(self) -> dict[str, nn.Module]:
        """The trained modules by name (``last.pt`` keys; DDP synchronises them)."""
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def train_mode(self) -> None:
        """Put the modules in training mode before an epoch (BatchNorm stays frozen)."""

    def batches(self, epoch: int, dist: Dist) -> Iterable:
        """This rank's share of each step's global batch."""
        raise NotImplementedError

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, figures to average over the epoch's steps)."""
        raise NotImplementedError

    def evaluate(self, epoch: int) -> dict:
        """A metrics row (rank 0 only; the others receive it)."""
        return {}

    def score(self, row: dict) -> float | None:
        """Selection score of a row; None: the latest epoch is always kept."""
        return None

    def checkpoint(self) -> C.Checkpoint:
        raise NotImplementedError

    def snapshot(self) -> object:
        """For runs that keep their best epoch in memory and write it once, at the end."""
        raise NotImplementedError

    def restore(self, snap: object) -> None:
        raise NotImplementedError


class _Step(nn.Module):
    """The algorithm's loss as a module's forward, so DDP sees every step."""

    def __init__(self, algo: Algorithm) -> None:
        super().__init__()
        self.algo = algo
        self.parts = nn.ModuleDict(algo.modules())

    def forward(self, batch):
        return self.algo.loss(batch)


class Trainer:
    """Optimiser, schedule, gradient scaling and (under torchrun) DDP for one algorithm."""

    def __init__(self, algo: Algorithm, run: Run, total_steps: int) -> None:
        self.algo, self.run = algo, run
        self.optim = torch.optim.AdamW(algo.param_groups(), weight_decay=algo.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, schedule(total_steps, algo.warmup_steps))
        self.amp = run.amp and algo.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        step = _Step(algo)
        if run.dist.world > 1:
            # BatchNorm statistics are frozen in every algorithm: nothing to broadcast.
            step = nn.parallel.DistributedDataParallel(
                step, device_ids=[run.device.index] if run.device.type == "cuda" else None,
                forward_sync_buffers=False, find_unused_parameters=algo.unused_parameters)
        self.step = step

    def epoch(self, epoch: int, on_step: Callable[[int, dict], None] | None = None) -> dict:
        """One pass over the algorithm's batches; the mean of each logged figure, averaged
        over the ranks."""
        self.algo.train_mode()
        sums: dict[str, list[float]] = {}
        for i, batch in enumerate(self.algo.batches(epoch, self.run.dist)):
            with torch.autocast(self.run.device.type, enabled=self.amp):
                loss, logs = self.step(batch)
            self.optim.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
            self.sched.step()
            for k, v in logs.items():
                sums.setdefault(k, []).append(v)
            if on_step:
                on_step(i + 1, logs)
        return self.run.dist.mean({k: float(np.mean(v)) for k, v in sums.items()})


@dataclass(frozen=True)
class Plan:
    """How ``fit`` runs: epochs of steps; ``baseline``: evaluate the untrained model first
    (epoch -1) and let it win the selection when ``baseline_selectable``; ``patience``:
    stop after that many epochs without a better score; ``best_in_memory``: keep the best
    epoch as a snapshot and write ``best.pt`` once at the end; ``resumable``: write
    ``last.pt`` after every epoch."""

    epochs: int
    steps_per_epoch: int
    baseline: bool = False
    baseline_selectable: bool = False
    patience: int | None = None
    best_in_memory: bool = False
    resumable: bool = False
    desc: str = "epochs"


class Selection:
    """The best row so far by ``score`` (None scores: the latest trained row wins)."""

    def __init__(self) -> None:
        self.best: float | None = None
        self.row: dict | None = None
        self.stale = 0

    def offer(self, row: dict, score: float | None) -> bool:
        better = score is None or self.best is None or score > self.best + 1e-9
        if better:
            self.best, self.row, self.stale = score, row, 0
        else:
            self.stale += 1
        return better


def fit(algo: Algorithm, run: Run, plan: Plan, log: MetricsLog, resume: bool = False,
        on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``algo`` as ``plan`` says; returns the selected row. Rank 0 evaluates, logs
    and writes checkpoints; every rank gets the same rows, so all stop together.
    ``on_step(step in epoch, logs)`` is called after every optimiser step."""
    trainer = Trainer(algo, run, plan.epochs * plan.steps_per_epoch)
    sel, snap, first = Selection(), None, 0
    last = run.run_dir / "last.pt" if run.run_dir is not None else None
    if resume:
        first, log.rows = C.load_state(last, algo.modules(), trainer.optim, trainer.sched,
                                       run.device)
        for r in log.rows:
            if r["epoch"] >= 0 or plan.baseline_selectable:
                sel.offer(r, algo.score(r))
    if first == 0 and plan.baseline:
        row = _evaluated(algo, run, -1, {"seconds": 0.0})
        log.add(row)
        if plan.baseline_selectable and sel.offer(row, algo.score(row)):
            snap = _keep(algo, run, plan)
    bar = tqdm(range(first, plan.epochs), desc=plan.desc, disable=None if run.dist.is_main
               else True)
    for epoch in bar:
        t0 = time.perf_counter()
        logs = trainer.epoch(epoch, on_step)
        row = _evaluated(algo, run, epoch, {**logs, "seconds": time.perf_counter() - t0,
                                            "lr": trainer.optim.param_groups[0]["lr"]})
        log.add(row)
        if sel.offer(row, algo.score(row)):
            snap = _keep(algo, run, plan) or snap
        if plan.resumable and run.dist.is_main:
            C.save_state(last, epoch, algo.modules(), trainer.optim, trainer.sched, log.rows)
        if plan.patience is not None and sel.stale >= plan.patience:
            break
    if plan.best_in_memory and run.dist.is_main:
        algo.restore(snap)
        C.save(algo.checkpoint(), run.run_dir / "best.pt")
    return sel.row


def _evaluated(algo: Algorithm, run: Run, epoch: int, logs: dict) -> dict:
    row = {"epoch": epoch, **logs, **algo.evaluate(epoch)} if run.dist.is_main else None
    return run.dist.broadcast(row)


def _keep(algo: Algorithm, run: Run, plan: Plan) -> object:
    if not run.dist.is_main:
        return None
    if plan.best_in_memory:
        return algo.snapshot()
    C.save(algo.checkpoint(), run.run_dir / "best.pt")
    return None
