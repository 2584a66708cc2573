"""Training objectives. Each takes L2-normalised embeddings (n, dim) and labels (n,).

``ce`` and ``cosface`` train a head over the base classes; ``proto`` and ``supcon`` shape the
embedding space directly, which is what one-shot enrollment of unseen classes relies on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OBJECTIVES = ("ce", "proto", "supcon", "cosface")


class LinearHead(nn.Module):
    """Cross-entropy with label smoothing over a linear classifier of the pooled features."""

    def __init__(self, dim: int, classes: int, smoothing: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)
        self.smoothing = smoothing

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)

    def loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.fc(pooled), labels, label_smoothing=self.smoothing)


class CosFaceHead(nn.Module):
    """Large-margin cosine loss (CosFace): s * (cos(theta) - m) for the true class."""

    def __init__(self, dim: int, classes: int, scale: float = 30.0, margin: float = 0.35) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(emb, dim=1) @ F.normalize(self.weight, dim=1).T

    def loss(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(emb)
        margin = F.one_hot(labels, logits.shape[1]).to(logits.dtype) * self.scale * self.margin
        return F.cross_entropy(logits - margin, labels)


def prototypical_loss(emb: torch.Tensor, labels: torch.Tensor, shot: int,
                      scale: float = 10.0) -> torch.Tensor:
    """Episodic loss (Snell et al.) with cosine logits.

    ``emb`` is grouped by class, ``shot`` support then the queries of each class, as
    ``EpisodeSampler`` yields them.
    """
    classes = torch.unique_consecutive(labels)
    per = emb.shape[0] // len(classes)
    grouped = emb.view(len(classes), per, -1)
    protos = F.normalize(grouped[:, :shot].mean(1), dim=1)
    queries = F.normalize(grouped[:, shot:].reshape(-1, emb.shape[1]), dim=1)
    target = torch.arange(len(classes), device=emb.device).repeat_interleave(per - shot)
    return F.cross_entropy(scale * queries @ protos.T, target)


def supcon_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al.): pull same-label pairs, push the rest."""
    z = F.normalize(emb, dim=1)
    sim = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, -1e9)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    count = positives.sum(1)
    has = count > 0
    return -((log_prob * positives).sum(1)[has] / count[has]).mean()
