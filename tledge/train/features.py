"""Where training batches come from: cached trunk features, or images on the fly.

When the first stages are frozen (``head`` and ``partial`` modes), their output never
changes, so each image is pushed through them once per augmented view and the cache is
trained on: a CPU trains the last blocks in seconds per epoch instead of minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tledge.runtime.images import load_image
from tledge.train.backbones import Backbone
from tledge.train.data import LabelledImages, eval_transform, train_transform

# Small batches: on CPU, activations over ~32 MB are mmap'ed afresh by glibc on every call
# and the page faults cost more than the convolutions (measured: 27 ms/image at batch 4,
# 72 ms/image at batch 64 on this project's 2-core machines).
CACHE_BATCH = 8


@dataclass
class CachedViews:
    """Trunk outputs ``x`` (n_items, ...) with ``labels`` (n_items,) and ``image`` ids."""

    x: torch.Tensor
    labels: np.ndarray
    image: np.ndarray
    anchor: torch.Tensor | None = None  # the pretrained embedding of each item (n_items, dim)


@torch.no_grad()
def cache_views(backbone: Backbone, stop: int, data: LabelledImages, views: int,
                augment: bool, device: torch.device, seed: int,
                desc: str = "caching features") -> CachedViews:
    """Run each image through stages [0, stop): one clean view, or ``views`` augmented ones."""
    cfg = backbone_cfg(backbone)
    tf = train_transform(cfg) if augment else eval_transform(cfg)
    n_views = views if augment else 1
    torch.manual_seed(seed)
    outs, labels, image_ids = [], [], []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            outs.append(backbone.forward_until(torch.stack(batch).to(device), stop).cpu())
            batch.clear()

    for i, path in enumerate(tqdm(data.files, desc=desc, unit="img", leave=False, disable=None)):
        img = Image.fromarray(load_image(path))
        for _ in range(n_views):
            batch.append(tf(img))
            labels.append(int(data.labels[i]))
            image_ids.append(i)
            if len(batch) >= CACHE_BATCH:
                flush()
    flush()
    return CachedViews(torch.cat(outs), np.array(labels), np.array(image_ids))


def backbone_cfg(backbone: Backbone):
    from tledge.train.backbones import get_spec

    return get_spec(backbone.name).preprocess


def trainable_start(backbone: Backbone, mode: str, unfreeze: int) -> int:
    """Index of the first trainable stage: all stages for head mode, none frozen for full."""
    n = len(backbone.stages)
    if mode == "head":
        return n
    if mode == "full":
        return 0
    if not 1 <= unfreeze <= n:
        raise ValueError(f"--unfreeze must be between 1 and {n} for {backbone.name}, "
                         f"got {unfreeze}")
    return n - unfreeze


def set_trainable(backbone: Backbone, start: int) -> list[torch.nn.Parameter]:
    """Freeze stages before ``start``; keep every BatchNorm's statistics fixed (small data)."""
    params = []
    for i, stage in enumerate(backbone.stages):
        for p in stage.parameters():
            p.requires_grad = i >= start
            if i >= start:
                params.append(p)
    return params


def freeze_batchnorm(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
