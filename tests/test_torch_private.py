"""The one private PyTorch API tledge uses (``tledge.train.torch_private``) still exists and
behaves as the int8-aware distillation relies on; on an unchecked PyTorch version this
fails and says what to re-verify."""

import torch

from tledge.train import torch_private as P


def test_torch_version_was_checked():
    version = ".".join(torch.__version__.split(".")[:2])
    assert version in P.CHECKED_TORCH, (
        f"PyTorch {torch.__version__} is not in tledge.train.torch_private.CHECKED_TORCH: "
        "re-verify learnable_fake_quant (this file's other test) and add the version")


def test_learnable_fake_quant_forward_and_gradients_match_the_formula():
    torch.manual_seed(0)
    x = (torch.randn(64) * 3).requires_grad_(True)
    scale = torch.tensor([0.05], requires_grad=True)
    zero = torch.tensor([100.0])
    y = P.learnable_fake_quant(x, scale, zero, 0, 255, 1.0)
    q = torch.clamp(torch.round(x.detach() / 0.05) + 100, 0, 255)
    torch.testing.assert_close(y.detach(), (q - 100) * 0.05)
    y.sum().backward()
    inside = (x.detach() / 0.05 + 100 >= 0) & (x.detach() / 0.05 + 100 <= 255)
    torch.testing.assert_close(x.grad, inside.float())  # straight-through inside the range
    # LSQ: d y / d s = round(x/s) - x/s inside, the clamped level (minus z) outside
    xs = x.detach() / 0.05
    lsq = torch.where(inside, torch.round(xs) - xs, torch.clamp(torch.round(xs) + 100, 0, 255)
                      - 100)
    torch.testing.assert_close(scale.grad, lsq.sum().reshape(1), atol=1e-4, rtol=1e-4)
