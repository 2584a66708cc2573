"""Nearest class mean: the one place class prototypes are computed (easyfsl's
``compute_prototypes``). Validation, adaptation figures and open-set thresholds all use it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def compute_prototypes(feats: torch.Tensor, labels: np.ndarray,
                       center: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """``(classes (k,), prototypes (k, dim))``: per class the mean of the L2-normalised
    (optionally ``center``-subtracted, CL2N) features (n, dim), itself L2-normalised."""
    unit = normalised(feats, center)
    classes = np.unique(labels)
    protos = torch.stack([unit[torch.as_tensor(labels == c)].mean(0) for c in classes])
    return classes, F.normalize(protos, dim=1)


def normalised(feats: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """(n, dim) -> (n, dim) unit vectors, ``center`` subtracted first when given."""
    return F.normalize(feats - center if center is not None else feats, dim=1)


def ncm_predict(protos: tuple[np.ndarray, torch.Tensor], feats: torch.Tensor) -> np.ndarray:
    """The class (n,) of the prototype nearest (cosine) to each feature (n, dim)."""
    classes, p = protos
    return classes[(F.normalize(feats, dim=1) @ p.T).argmax(1).numpy()]


def ncm_accuracy(train: tuple[torch.Tensor, np.ndarray],
                 test: tuple[torch.Tensor, np.ndarray]) -> float:
    """Nearest-class-mean accuracy of ``test`` (features, labels) with prototypes from
    ``train``: the embedding's own quality, independent of any classifier."""
    pred = ncm_predict(compute_prototypes(*train), test[0])
    return float((pred == test[1]).mean())


def open_set_threshold(train: tuple[torch.Tensor, np.ndarray],
                       val: tuple[torch.Tensor, np.ndarray], center: torch.Tensor | None,
                       disjoint: bool, far: float = 0.05) -> float:
    """Open-set threshold accepting ``far`` of impostors: validation embeddings scored
    against the prototypes of the other classes (held-out classes: among themselves).
    ``train`` and ``val`` are (pooled features (n, dim), labels (n,))."""
    va, va_y = val
    classes, protos = compute_prototypes(*(val if disjoint else train), center)
    scores = (normalised(va, center) @ protos.T).numpy()
    scores[np.arange(len(va_y)), np.searchsorted(classes, va_y)] = -np.inf
    return float(np.quantile(scores.max(1), 1.0 - far))
