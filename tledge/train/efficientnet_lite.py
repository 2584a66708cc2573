"""EfficientNet-Lite0 as a sequence of stages; the published ``efficientnet-lite0-57934424.pth``
(EfficientNet-PyTorch parameter names) loads through ``remap_lite0_keys``.

Lite = EfficientNet-B0 without squeeze-excitation, with ReLU6 and a fixed stem/head, as
designed for mobile accelerators. Convolutions pad like TensorFlow's ``SAME`` (asymmetric
for stride 2), which is how the weights were trained.
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


def lite0_stages() -> list[nn.Module]:
    """Stem, the 16 MBConv blocks, head: (n, 3, 224, 224) -> (n, 1280, 7, 7) in sequence."""
    stages: list[nn.Module] = [ConvBNReLU6(3, 32, 3, 2)]
    cin = 32
    for repeats, kernel, stride, expand, cout in STAGES:
        for i in range(repeats):
            stages.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
            cin = cout
    stages.append(ConvBNReLU6(cin, FEATURE_DIM, 1, 1))
    return stages


def remap_lite0_keys(state: dict, n_blocks: int = 16) -> dict:
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
