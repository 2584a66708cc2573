"""Images into tensors on the PyTorch side, with the same decoding as the runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from tledge.artifact import Preprocess
from tledge.runtime.images import is_image_file, load_image

_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
           "nearest": InterpolationMode.NEAREST}


def eval_transform(cfg: Preprocess) -> v2.Compose:
    """torchvision's eval pipeline for ``cfg``: PIL image -> float32 (3, crop, crop)."""
    size = cfg.resize_size if cfg.resize_mode == "shorter_side" else (cfg.crop_size, cfg.crop_size)
    return v2.Compose([
        v2.Resize(size, interpolation=_INTERP[cfg.interpolation], antialias=True),
        v2.CenterCrop(cfg.crop_size),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(cfg.mean), list(cfg.std)),
    ])


def load_batch(paths: Sequence[Path], cfg: Preprocess) -> torch.Tensor:
    """Decode ``paths`` (runtime decoder) and apply the eval transform -> (n, 3, H, W)."""
    tf = eval_transform(cfg)
    tensors = []
    for p in paths:
        rgb = load_image(p)
        if cfg.color_order == "BGR":
            rgb = rgb[:, :, ::-1].copy()
        tensors.append(tf(Image.fromarray(rgb)))
    return torch.stack(tensors)


def image_files(folder: Path, limit: int | None = None) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted by path)."""
    files = sorted(p for p in Path(folder).rglob("*") if is_image_file(p))
    return files[:limit] if limit else files
