"""A training process for tests/test_ddp.py, started by ``torch.distributed.run`` (or
plainly, as one process): multi-task training of the tiny backbone on the shipped images
(tasks: the sample set and the class) through the real engine. After every optimiser step
it gathers a digest of the trained parameters from every rank and records whether they
agree; rank 1 also records every file it writes under the run directory (there must be
none). Writes OUT/result-<rank>.json and the run directory OUT/run."""

from __future__ import annotations

import builtins
import io
import json
import sys
from pathlib import Path

import torch
import torch.distributed as tdist

from tledge.samples import sample_root
from tledge.train.engine import Plan, Run, fit
from tledge.train.multitask import Multitask, MultitaskConfig, TaskSpec
from tledge.train.report import MetricsLog


def main(out: Path) -> None:
    run_dir = out / "run"
    config = MultitaskConfig(backbone="tiny", unfreeze=2, epochs=2, steps_per_epoch=4,
                             batch=16, lr=3e-3, backbone_lr_mult=1.0, device="cpu")
    spec = TaskSpec.from_tree(sample_root(), ["set", "class"])
    run = Run.start(run_dir, config.device, config.seed)
    writes = _record_writes(run_dir) if run.dist.rank == 1 else []
    built = _count_cache_builds()
    algo = Multitask(spec, config, run)
    run.write_json("config.json", {"world": run.dist.world})
    algo.prepare(run.feature_dir(None))
    agree: list[bool] = []

    def check(step: int, logs: dict) -> None:
        flat = torch.cat([p.detach().flatten() for p in _trained(algo)])
        if run.dist.world > 1:
            every = [torch.zeros_like(flat) for _ in range(run.dist.world)]
            tdist.all_gather(every, flat)
            agree.append(all(torch.equal(every[0], x) for x in every[1:]))
        else:
            agree.append(True)

    log = MetricsLog(run_dir, write=run.dist.is_main)
    best = fit(algo, run, Plan(config.epochs, config.steps_per_epoch, resumable=True), log,
               on_step=check)
    params = {f"p{i}": p.detach().clone() for i, p in enumerate(_trained(algo))}
    torch.save(params, out / f"params-{run.dist.rank}.pt")
    run.close()
    (out / f"result-{run.dist.rank}.json").write_text(json.dumps(
        {"world": run.dist.world, "steps_in_step": agree, "best": best,
         "rows": log.rows, "writes": writes,
         "caches_built": built[0]}, default=str))


def _trained(algo: Multitask) -> list[torch.nn.Parameter]:
    return [p for m in algo.modules().values() for p in m.parameters() if p.requires_grad]


def _count_cache_builds() -> list[int]:
    """How many times this process runs the frozen trunk over a data set."""
    from tledge.train import features

    count, real = [0], features.cache_views

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    features.cache_views = counting
    return count


def _record_writes(run_dir: Path) -> list[str]:
    """Note every file this process opens for writing under ``run_dir``."""
    seen: list[str] = []
    real_open, real_save = builtins.open, torch.save
    root = str(run_dir.resolve())

    def note(path) -> None:
        if isinstance(path, (str, Path)) and str(Path(path).resolve()).startswith(root):
            seen.append(str(path))

    def opening(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            note(file)
        return real_open(file, mode, *args, **kwargs)

    def saving(obj, f, *args, **kwargs):
        note(f)
        return real_save(obj, f, *args, **kwargs)

    builtins.open = io.open = opening  # Path.write_text goes through io.open
    torch.save = saving
    return seen


if __name__ == "__main__":
    main(Path(sys.argv[1]))
