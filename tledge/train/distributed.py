"""Data-parallel training under ``torchrun`` (``torch.distributed.run``): one process per
device, gloo on CPU, NCCL on GPUs, nothing of our own to launch.

A process started by ``torchrun`` finds ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and the
rendezvous address in its environment; ``Dist.from_env`` joins the process group. Without
them the run is one process and every helper here is a no-op. Collectives wait at most
``$TLEDGE_DIST_TIMEOUT`` seconds (default 1800: rank 0 may spend minutes building the
feature cache while the others wait); a rank that dies or hangs ends the job with a
``DistributedError`` naming what happened instead of a hang.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from tledge.errors import TledgeError


class DistributedError(TledgeError):
    """Another training process died, hung, or the process group could not form."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> tuple[Dist, torch.device]:
        """Join the process group torchrun prepared (if any); returns (dist, this rank's
        device). ``device``: auto, cpu or cuda (NCCL needs one GPU per local rank)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(), pick_device(device)
        me = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        cuda = device != "cpu" and torch.cuda.is_available()
        if device == "cuda" and not cuda:
            raise TledgeError("--device cuda was requested but torch sees no CUDA device")
        dev = torch.device("cuda", me.local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(dev)
        if not tdist.is_initialized():
            with errors("joining the process group"):
                tdist.init_process_group("nccl" if cuda else "gloo", timeout=timeout(),
                                         device_id=dev if cuda else None)
        return me, dev

    def barrier(self) -> None:
        if self.world > 1:
            with errors("waiting at a barrier"):
                tdist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable value)."""
        if self.world == 1:
            return obj
        box = [obj]
        with errors("receiving rank 0's result"):
            tdist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (the same keys on every rank)."""
        if self.world == 1 or not values:
            return values
        t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)
        with errors("averaging metrics"):
            tdist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(values, t.tolist())}

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of a global batch of indices (equal parts)."""
        if self.world == 1:
            return idx
        if len(idx) % self.world:
            raise TledgeError(f"a batch of {len(idx)} does not split evenly over "
                              f"{self.world} processes; use a multiple of {self.world}")
        n = len(idx) // self.world
        return idx[self.rank * n:(self.rank + 1) * n]

    def shared(self, path: Path | None, compute: Callable[[], dict],
               load: Callable[[Path], dict | None], save: Callable[[Path, dict], None]) -> dict:
        """``compute()`` once: rank 0 computes (or loads) it and writes ``path``; the other
        ranks wait at a barrier and load it. One process: the file is a cache when given."""
        if path is None and self.world == 1:
            return compute()
        value = None
        if self.is_main:
            value = load(path) if path is not None else None
            if value is None:
                value = compute()
                save(path, value)
        self.barrier()
        return value if value is not None else load(path)

    def close(self) -> None:
        if self.world > 1 and tdist.is_initialized():
            tdist.destroy_process_group()


def timeout() -> dt.timedelta:
    return dt.timedelta(seconds=float(os.environ.get("TLEDGE_DIST_TIMEOUT", "1800")))


@contextlib.contextmanager
def errors(what: str) -> Iterator[None]:
    """Turn a failed collective into one clear error (the usual cause: a rank died)."""
    try:
        yield
    except (RuntimeError, tdist.DistError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DistributedError(
            f"rank {os.environ.get('RANK', '?')}: lost the other training processes while "
            f"{what} ({first}); a rank died or hung. The run directory keeps the last "
            "finished epoch: restart with the same command (finetune: add --resume)") from exc


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TledgeError("--device cuda was requested but torch sees no CUDA device")
    return torch.device(name)
