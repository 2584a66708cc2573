"""Test-time augmentation: several views of one picture averaged into one embedding.

A gallery records which views its shots were embedded with (its ``augment`` setting), so
enrollment, re-embedding and, when the gallery asks for it, queries all use the same views;
an embedding averaged over views is only comparable with embeddings of the same views.

Views are made from the RGB picture *before* the model's own preprocessing (resize, centre
crop, normalise), so each view is what the model would see for another photo.
"""

from __future__ import annotations

import numpy as np

from tledge.artifact import Preprocess
from tledge.errors import TledgeError
from tledge.runtime.preprocess import preprocess_one

# Measured before choosing (MobileNetV2, 17 held-out Caltech classes, paired episodes):
# flipped shots +0.5 ± 0.4 points all-way 1-shot, flipped shots and queries +0.9 ± 0.5;
# four 80% corner crops (with or without flip) did not help (-0.4 to +0.6, intervals across
# zero), so they were dropped.
AUGMENTS = ("none", "flip")


def check_augment(name: str) -> str:
    """``name`` if it is one of ``AUGMENTS``, else a one-line error."""
    if name not in AUGMENTS:
        raise TledgeError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTS)}")
    return name


def view_count(augment: str) -> int:
    """Views per picture: 1 (none) or 2 (flip: the picture and its mirror image)."""
    return 2 if check_augment(augment) == "flip" else 1


def views(rgb: np.ndarray, augment: str) -> list[np.ndarray]:
    """The ``view_count(augment)`` views of an RGB uint8 (H, W, 3) picture, the picture
    itself first."""
    if check_augment(augment) == "none":
        return [rgb]
    return [rgb, np.ascontiguousarray(rgb[:, ::-1])]


def view_tensors(rgb: np.ndarray, augment: str, cfg: Preprocess,
                 fast: bool = False) -> list[np.ndarray]:
    """The model's input tensors (3, S, S) for each view of ``rgb``."""
    return [preprocess_one(v, cfg, fast) for v in views(rgb, augment)]


def pool_views(vectors: np.ndarray, n_views: int) -> np.ndarray:
    """(n * n_views, dim) embeddings, each picture's views consecutive -> (n, dim): the mean
    of each picture's views, L2-normalised (the mean of unit vectors is shorter than 1)."""
    if n_views == 1:
        return vectors
    if len(vectors) % n_views:
        raise TledgeError(f"{len(vectors)} embeddings are not whole groups of {n_views} views")
    mean = vectors.reshape(-1, n_views, vectors.shape[-1]).mean(axis=1)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norm, 1e-12)).astype(np.float32)
