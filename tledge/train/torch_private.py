"""The one place tledge calls a private PyTorch API.

``torch._fake_quantize_learnable_per_tensor_affine`` is the fused LSQ kernel (a trainable
step size with its gradient scale, Esser et al. 2020) that int8-aware distillation trains
its activation ranges with. PyTorch has no public equivalent; ``tests/test_torch_private.py``
checks its signature and behaviour against a reference and fails loudly, naming this file,
on a PyTorch version that has not been checked yet (``CHECKED_TORCH``).
"""

from __future__ import annotations

import torch

CHECKED_TORCH = ("2.14",)   # major.minor versions this wrapper was verified on


def learnable_fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                         qmin: int, qmax: int, grad_factor: float) -> torch.Tensor:
    """Per-tensor affine fake quantisation with a trainable ``scale`` (1,): forward
    ``(clamp(round(x / s) + z, qmin, qmax) - z) * s``; backward straight-through for ``x``
    inside the range and LSQ's gradient, times ``grad_factor``, for ``s`` (``z`` fixed)."""
    return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, qmin, qmax,
                                                            grad_factor)
