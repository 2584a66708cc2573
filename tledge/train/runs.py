"""Pieces every training run shares: embedding cached trunk outputs and the checkpoint file
that ``tledge export --checkpoint`` reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECKPOINT_FORMAT = "tledge-checkpoint-1"
EMBED_STEP = 32


@torch.no_grad()
def embed_cached(pooled: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run cached trunk outputs (n, ...) through ``pooled`` in small batches: (n, dim) on CPU."""
    parts = [pooled(x[i:i + EMBED_STEP]).float().cpu() for i in range(0, len(x), EMBED_STEP)]
    return torch.cat(parts) if parts else torch.zeros(0)


def save_checkpoint(path: Path, kind: str, config: dict, backbone_name: str, classes: list[str],
                    backbone: nn.Module, heads: dict[str, tuple[list[str], nn.Linear]],
                    center: torch.Tensor, train: tuple[torch.Tensor, np.ndarray],
                    val: tuple[torch.Tensor, np.ndarray], disjoint: bool = False) -> None:
    """Write a checkpoint with linear ``heads`` {name: (labels, layer)} over the pooled
    features and the open-set thresholds measured on ``val`` against ``train`` prototypes
    (``disjoint``: validation holds other classes than training)."""
    from tledge.train.finetune import open_set_threshold

    torch.save({"format": CHECKPOINT_FORMAT, "kind": kind, "config": config,
                "backbone": backbone_name, "classes": classes, "model": backbone.state_dict(),
                "heads": {name: {"labels": list(labels), "state": layer.state_dict()}
                          for name, (labels, layer) in heads.items()},
                "center": center,
                "threshold_cl2n": open_set_threshold(train, val, center, disjoint),
                "threshold_l2n": open_set_threshold(train, val, None, disjoint)}, path)
