"""Where training batches come from: cached trunk features, or images on the fly.

When the first stages are frozen (``head`` and ``partial`` modes), their output never
changes, so each image is pushed through them once per augmented view and the cache is
trained on: a CPU trains the last blocks in seconds per epoch instead of minutes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tledge.runtime.images import load_image
from tledge.train.alignment import BATCHNORMS
from tledge.train.data import LabelledImages, eval_transform, train_transform
from tledge.train.distributed import Dist
from tledge.train.registry import Backbone

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
    cfg = backbone.preprocess
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


@torch.no_grad()
def embed_cached(pooled, x: torch.Tensor, step: int = 32) -> torch.Tensor:
    """Run cached trunk outputs (n, ...) through ``pooled`` in small batches: (n, dim) on CPU."""
    parts = [pooled(x[i:i + step]).float().cpu() for i in range(0, len(x), step)]
    return torch.cat(parts) if parts else torch.zeros(0)


def shared_views(dist: Dist, cache_dir: Path | None, key: list, compute) -> CachedViews:
    """``compute()`` (a ``CachedViews``) built once; see ``shared_tensors``."""
    return _unpack(shared_tensors(dist, cache_dir, key, lambda: _pack(compute())))


def shared_tensors(dist: Dist, cache_dir: Path | None, key: list, compute) -> dict:
    """``compute()`` (a dict of tensors) built once: kept in ``cache_dir`` under a hash of
    ``key`` when given (later runs on the same images reuse it), and under torchrun built by
    rank 0 and loaded by the others (from ``cache_dir``, which is then required)."""
    path = None
    if cache_dir is not None:
        name = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"cache-{name}.pt"
    return dist.shared(path, compute, load_tensors, save_tensors)


def load_tensors(path: Path) -> dict[str, torch.Tensor] | None:
    """A cached dict of tensors, or None when missing or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        path.unlink(missing_ok=True)
        return None


def save_tensors(path: Path, value: dict[str, torch.Tensor]) -> None:
    """Written beside its name and moved into place: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    tmp.replace(path)


def _pack(views: CachedViews) -> dict[str, torch.Tensor]:
    return {"x": views.x, "labels": torch.from_numpy(views.labels),
            "image": torch.from_numpy(views.image)}


def _unpack(z: dict[str, torch.Tensor]) -> CachedViews:
    return CachedViews(z["x"], z["labels"].numpy(), z["image"].numpy())


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
        if isinstance(m, BATCHNORMS):
            m.eval()
