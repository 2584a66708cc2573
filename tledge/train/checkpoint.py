"""The checkpoint a run keeps and ``tledge export --checkpoint`` reads: one typed record,
written and read side by side here (as open_clip keeps ``save_checkpoint`` and
``load_checkpoint`` together), plus the engine's resumable training state.

Formats read: ``tledge-checkpoint-1`` as written since heads became generic (``heads``:
{name: {labels, state}}), and the earlier variant of it where a ``ce`` run kept its
classifier as ``head`` (a LinearHead state, ``fc.*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tledge.errors import TledgeError
from tledge.train.protos import open_set_threshold

FORMAT = "tledge-checkpoint-1"
CHECKPOINT_FORMAT = FORMAT  # the name the run module used


class CheckpointError(TledgeError):
    """A file is missing or is not a tledge checkpoint."""


@dataclass
class HeadState:
    labels: list[str]
    state: dict[str, torch.Tensor]      # an nn.Linear(dim, len(labels)) state dict


@dataclass
class Checkpoint:
    """What an export needs: ``model`` (the backbone's state dict), linear ``heads`` over the
    pooled embedding, the CL2N ``center`` (dim,), and open-set thresholds measured with and
    without centring."""

    kind: str                           # finetune, adapt, multitask
    config: dict
    backbone: str
    classes: list[str]
    model: dict[str, torch.Tensor]
    heads: dict[str, HeadState] = field(default_factory=dict)
    center: torch.Tensor | None = None
    threshold_cl2n: float | None = None
    threshold_l2n: float | None = None

    @property
    def recipe(self) -> str:
        """e.g. ``partial/proto`` or ``dann``: the config keys that name the algorithm."""
        return "/".join(str(self.config[k]) for k in ("mode", "objective", "method", "weighting")
                        if k in self.config)

    def threshold(self, centred: bool) -> float | None:
        return self.threshold_cl2n if centred else self.threshold_l2n

    def to_dict(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, "config": self.config,
                "backbone": self.backbone, "classes": self.classes, "model": self.model,
                "heads": {n: {"labels": list(h.labels), "state": h.state}
                          for n, h in self.heads.items()},
                "center": self.center, "threshold_cl2n": self.threshold_cl2n,
                "threshold_l2n": self.threshold_l2n}

    @classmethod
    def from_dict(cls, d: dict) -> Checkpoint:
        return cls(kind=d.get("kind", "finetune"), config=d["config"], backbone=d["backbone"],
                   classes=list(d["classes"]), model=d["model"], heads=_heads(d),
                   center=d.get("center"), threshold_cl2n=d.get("threshold_cl2n"),
                   threshold_l2n=d.get("threshold_l2n"))


def _heads(d: dict) -> dict[str, HeadState]:
    if "heads" in d:
        return {n: HeadState(list(h["labels"]), h["state"]) for n, h in d["heads"].items()}
    if d["config"].get("objective") == "ce" and "head" in d:  # the earlier ``head`` format
        state = {k[len("fc."):]: v for k, v in d["head"].items() if k.startswith("fc.")}
        return {"classes": HeadState(list(d["classes"]), state)}
    return {}


def make_checkpoint(kind: str, config: dict, backbone_name: str, classes: list[str],
                    backbone: nn.Module, heads: dict[str, tuple[list[str], nn.Linear]],
                    center: torch.Tensor, train: tuple[torch.Tensor, np.ndarray],
                    val: tuple[torch.Tensor, np.ndarray], disjoint: bool = False) -> Checkpoint:
    """A checkpoint of ``backbone`` with linear ``heads`` {name: (labels, layer)}, and the
    open-set thresholds measured on ``val`` against ``train`` prototypes (``disjoint``:
    validation holds other classes than training)."""
    return Checkpoint(kind, config, backbone_name, list(classes), backbone.state_dict(),
                      {n: HeadState(list(labels), layer.state_dict())
                       for n, (labels, layer) in heads.items()},
                      center, open_set_threshold(train, val, center, disjoint),
                      open_set_threshold(train, val, None, disjoint))


def save(ckpt: Checkpoint, path: Path) -> None:
    torch.save(ckpt.to_dict(), path)


def load(path: str | Path) -> Checkpoint:
    """A run directory's ``best.pt`` (or a checkpoint file), loaded with ``weights_only``."""
    path = Path(path)
    path = path / "best.pt" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one with `tledge finetune`")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise CheckpointError(f"{path} is not a readable tledge checkpoint ({exc})") from exc
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tledge checkpoint (format {FORMAT})")
    return Checkpoint.from_dict(d)


def save_state(path: Path, epoch: int, modules: dict[str, nn.Module], optim, sched,
               history: list[dict]) -> None:
    """The resumable training state (``last.pt``): the epoch just finished, every trained
    module's state, the optimiser, the schedule and the metrics rows so far."""
    torch.save({"epoch": epoch, **{k: m.state_dict() for k, m in modules.items()},
                "optim": optim.state_dict(), "sched": sched.state_dict(),
                "history": history}, path)


def load_state(path: Path, modules: dict[str, nn.Module], optim, sched,
               device: torch.device) -> tuple[int, list[dict]]:
    """Restore what ``save_state`` wrote; returns (next epoch, metrics rows)."""
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} not found")
    state = torch.load(path, map_location=device, weights_only=True)
    for k, m in modules.items():
        m.load_state_dict(state[k])
    optim.load_state_dict(state["optim"])
    sched.load_state_dict(state["sched"])
    return int(state["epoch"]) + 1, list(state["history"])
