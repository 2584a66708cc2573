"""Domain-alignment losses: small modules with injected parts, schedules passed in.

All take pooled source features ``f_s`` (n, dim) and target features ``f_t`` (m, dim) (or
target logits, for MCC) and return a scalar loss. Target labels never appear here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("none", "dann", "coral", "mcc", "adabn")
# Alignment-loss weights. DANN at 1.0 collapsed the features on PACS photo->sketch with
# MobileNetV2 (15% target accuracy); 0.3 learned (34%). CORAL and MCC use their papers' 1.0.
DEFAULT_WEIGHT = {"dann": 0.3, "coral": 1.0, "mcc": 1.0}
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


class GradientReversal(nn.Module):
    """Identity forward; multiplies the gradient by ``-coeff`` on the way back."""

    def forward(self, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        return _ReverseGrad.apply(x, coeff)


def dann_coefficient(progress: float, gamma: float = 10.0) -> float:
    """Ganin & Lempitsky's ramp 2 / (1 + exp(-gamma p)) - 1, from 0 at the start to ~1."""
    return 2.0 / (1.0 + math.exp(-gamma * min(max(progress, 0.0), 1.0))) - 1.0


class DomainDiscriminator(nn.Sequential):
    """(n, dim) -> (n, 1) logit that the feature comes from the source domain."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, 1))


class DomainAdversarialLoss(nn.Module):
    """DANN: the discriminator learns to tell the domains apart; through the gradient
    reversal layer the features learn to make that impossible."""

    def __init__(self, discriminator: nn.Module, grl: GradientReversal | None = None) -> None:
        super().__init__()
        self.discriminator, self.grl = discriminator, grl or GradientReversal()
        self.last_accuracy = float("nan")

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, coeff: float) -> torch.Tensor:
        logits = self.discriminator(self.grl(torch.cat([f_s, f_t]), coeff)).squeeze(1)
        target = torch.cat([torch.ones(len(f_s)), torch.zeros(len(f_t))]).to(logits)
        with torch.no_grad():
            self.last_accuracy = float(((logits > 0).to(target) == target).float().mean())
        return F.binary_cross_entropy_with_logits(logits, target)


def coral_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: squared Frobenius distance between the feature covariances, / 4 d^2."""
    def cov(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(0, keepdim=True)
        return x.T @ x / max(1, len(x) - 1)

    d = f_s.shape[1]
    return ((cov(f_s.float()) - cov(f_t.float())) ** 2).sum() / (4 * d * d)


def mcc_loss(target_logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """Minimum Class Confusion (Jin et al. 2020): penalise probability mass that target
    predictions share between classes, weighting confident examples more."""
    n, k = target_logits.shape
    probs = torch.softmax(target_logits / temperature, dim=1)
    entropy = -(probs * torch.log(probs + 1e-5)).sum(1).detach()
    weight = 1 + torch.exp(-entropy)
    weight = (n * weight / weight.sum()).unsqueeze(1)
    confusion = (probs * weight).T @ probs
    confusion = confusion / confusion.sum(1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / k


def information_maximisation(probs: torch.Tensor) -> float:
    """H(mean prediction) - mean H(prediction): high when target predictions are confident
    and spread over the classes. The label-free model-selection score."""
    eps = 1e-8
    mean = probs.mean(0)
    diversity = -(mean * torch.log(mean + eps)).sum()
    confidence = -(probs * torch.log(probs + eps)).sum(1).mean()
    return float(diversity - confidence)


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, batches, forward=None) -> int:
    """AdaBN: replace every BatchNorm's running statistics in ``model`` with those of
    ``batches`` (input tensors from the target domain, run through ``forward``, by default
    ``model`` itself). Returns the number of images seen."""
    forward = forward or model
    norms = [m for m in model.modules() if isinstance(m, BATCHNORMS)]
    saved = {m: m.momentum for m in norms}
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    seen = 0
    try:
        for x in batches:
            forward(x)
            seen += len(x)
    finally:
        for m in norms:
            m.momentum = saved[m]
            m.eval()
        model.train(was_training)
    return seen


def batchnorm_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BatchNorm's running mean and variance in ``model``, by buffer name."""
    return {name: buf.detach().clone() for name, buf in model.named_buffers()
            if name.endswith(("running_mean", "running_var"))}


class use_batchnorm_stats:
    """Context: run ``model`` with other BatchNorm statistics (domain-specific BatchNorm),
    restoring its own on exit. Buffers are swapped by reference, not copied in place, so a
    graph built inside the context still back-propagates after it exits."""

    def __init__(self, model: nn.Module, stats: dict[str, torch.Tensor]) -> None:
        self.model, self.stats = model, stats

    def __enter__(self) -> None:
        self.saved = self._swap(self.stats)

    def __exit__(self, *exc) -> None:
        self._swap(self.saved)

    def _swap(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        old = {}
        for prefix, module in self.model.named_modules():
            for key in ("running_mean", "running_var"):
                name = f"{prefix}.{key}" if prefix else key
                if name in stats:
                    old[name] = getattr(module, key)
                    setattr(module, key, stats[name])  # a registered buffer: rebinds it
        return old
