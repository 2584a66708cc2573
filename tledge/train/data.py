"""Images into tensors on the PyTorch side, with the same decoding as the runtime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from tledge.artifact import Preprocess
from tledge.runtime.images import list_images, load_image

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
        v2.ToPureTensor(),  # a tv_tensors.Image would route every later op through Python
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
    files = list_images(folder)
    return files[:limit] if limit else files


@dataclass(frozen=True)
class LabelledImages:
    """A class-per-folder dataset: ``files[i]`` has class index ``labels[i]``."""

    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray

    @classmethod
    def scan(cls, root: Path) -> LabelledImages:
        from tledge.runtime.batch import class_folders

        folders = class_folders(Path(root))
        files, labels = [], []
        for i, (_, paths) in enumerate(folders.items()):
            files += paths
            labels += [i] * len(paths)
        return cls(tuple(folders), tuple(files), np.array(labels, np.int64))

    def subset(self, idx: np.ndarray) -> LabelledImages:
        return LabelledImages(self.classes, tuple(self.files[i] for i in idx), self.labels[idx])


Split = tuple[np.ndarray, np.ndarray]


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> Split:
    """(train indices, validation indices), the same fraction of every class held out."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val += list(idx[:n_val])
        train += list(idx[n_val:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(val, np.int64))


def class_split(labels: np.ndarray, val_fraction: float, seed: int) -> Split:
    """(train indices, validation indices) with whole classes held out (at least two)."""
    classes = np.unique(labels)
    n_val = max(2, int(round(len(classes) * val_fraction)))
    if len(classes) - n_val < 2:
        raise ValueError(f"{len(classes)} classes are too few to hold {n_val} out for validation")
    held = np.random.default_rng(seed).choice(classes, n_val, replace=False)
    val = np.isin(labels, held)
    return np.flatnonzero(~val), np.flatnonzero(val)


def split_classes(root: Path, fraction: float, seed: int,
                  output: Path) -> tuple[list[str], list[str]]:
    """Split ``root``'s classes into ``output/base`` and ``output/novel`` (symbolic links)."""
    classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    order = np.random.default_rng(seed).permutation(len(classes))
    n_base = int(round(len(classes) * fraction))
    base = sorted(classes[i] for i in order[:n_base])
    novel = sorted(classes[i] for i in order[n_base:])
    for part, names in (("base", base), ("novel", novel)):
        (output / part).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = output / part / name
            if not link.exists():
                link.symlink_to(Path(root).resolve() / name, target_is_directory=True)
    return base, novel


def split_images(root: Path, fraction: float, seed: int, output: Path,
                 parts: tuple[str, str] = ("adapt", "eval")) -> tuple[int, int]:
    """Split every class's images of ``root`` in two: ``fraction`` of each class to
    ``output/parts[0]/<class>/``, the rest to ``output/parts[1]/<class>/`` (symbolic links).
    Returns the image counts of the two parts."""
    data = LabelledImages.scan(root)
    first, second = stratified_split(data.labels, 1.0 - fraction, seed)
    counts = []
    for part, idx in zip(parts, (first, second)):
        for i in idx:
            src = Path(data.files[i]).resolve()
            folder = output / part / data.classes[data.labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / src.name
            if not link.exists():
                link.symlink_to(src)
        counts.append(len(idx))
    return counts[0], counts[1]


def train_transform(cfg: Preprocess, strength: float = 1.0) -> v2.Compose:
    """Augmentation for fine-tuning: random resized crop, flip, colour jitter, then normalise."""
    return v2.Compose([
        v2.RandomResizedCrop(cfg.crop_size, scale=(1.0 - 0.65 * strength, 1.0),
                             interpolation=_INTERP[cfg.interpolation], antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.3 * strength, 0.3 * strength, 0.3 * strength, 0.03 * strength),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(cfg.mean), list(cfg.std)),
        v2.ToPureTensor(),  # a tv_tensors.Image would route every later op through Python
    ])


class ImageDataset(torch.utils.data.Dataset):
    """(tensor, label) pairs decoded with the runtime's decoder."""

    def __init__(self, data: LabelledImages, transform) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(load_image(self.data.files[i]))
        return self.transform(img), int(self.data.labels[i])


class EpisodeSampler(torch.utils.data.Sampler):
    """Batches of ``way`` classes x (``shot`` + ``query``) indices, grouped by class."""

    def __init__(self, labels: np.ndarray, way: int, shot: int, query: int, episodes: int,
                 seed: int) -> None:
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.by_class = [idx for idx in self.by_class if len(idx) >= shot + query]
        if len(self.by_class) < way:
            raise ValueError(f"{way}-way episodes need {way} classes with >= {shot + query} "
                             f"images; only {len(self.by_class)} have them")
        self.way, self.per_class, self.episodes = way, shot + query, episodes
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self):
        for _ in range(self.episodes):
            classes = self.rng.choice(len(self.by_class), self.way, replace=False)
            yield [int(i) for c in classes
                   for i in self.rng.choice(self.by_class[c], self.per_class, replace=False)]
