"""The backbone protocol and registry: named specs, resolvers for names no spec claims, and
``get_backbone`` that builds a model carrying its own preprocessing.

Every backbone follows one protocol (timm's ``forward_head`` idea): ``forward_features``
maps (n, 3, H, W) to a pooled embedding (n, dim); ``classifier`` maps that embedding to the
pretraining logits (or is None); ``stages`` list the network from input to output, for
partial fine-tuning. ``get_backbone`` stamps the spec on the model (as timm stamps
``pretrained_cfg``), so training and export read the preprocessing from the model itself.
The built-in specs and the torchvision resolver are registered by ``tledge.train.backbones``,
the module to import.
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
    trainable: bool = True    # False: export and evaluation only (ensembles)
    members: tuple[str, ...] = ()  # an ensemble's backbones: build(pretrained, allow_download)


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
        self.spec: BackboneSpec | None = None   # stamped by get_backbone

    @property
    def preprocess(self) -> Preprocess:
        """The input pipeline the weights expect (from the spec stamped on the model)."""
        if self.spec is None:
            raise TledgeError(f"backbone {self.name} was built without get_backbone(); "
                              "its preprocessing is unknown")
        return self.spec.preprocess

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


Resolver = Callable[[str], "BackboneSpec | None"]
_REGISTRY: dict[str, BackboneSpec] = {}
_RESOLVERS: list[tuple[Resolver, str]] = []


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise TledgeError(f"a backbone named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_resolver(resolver: Resolver, hint: str = "") -> Resolver:
    """Add a source of specs for names not registered (tried in order); ``hint`` is added
    to the unknown-name error, e.g. which other names work."""
    _RESOLVERS.append((resolver, hint))
    return resolver


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    for resolver, _ in _RESOLVERS:
        spec = resolver(name)
        if spec is not None:
            return spec
    hints = "".join(" " + hint for _, hint in _RESOLVERS if hint)
    raise TledgeError(f"unknown backbone {name!r}." + suggest(name, _REGISTRY) + hints)


def get_backbone(name: str, pretrained: bool = True, weights: str | None = None,
                 allow_download: bool = False,
                 training: bool = False) -> tuple[Backbone, BackboneSpec, str]:
    """Build ``name`` in eval mode, its spec stamped on it; returns (backbone, spec,
    description of the weights). ``training``: refuse a backbone that cannot be trained."""
    spec = get_spec(name)
    if training and not spec.trainable:
        raise TledgeError(f"{name} cannot be trained ({spec.summary}); train one of its "
                          "parts, or pick another backbone from `tledge backbones`")
    if spec.members:  # an ensemble loads each member's own verified weights
        if weights is not None:
            raise TledgeError(f"{name} is an ensemble: each member loads its own published "
                              "weights; --weights is for a single backbone")
        model = spec.build(pretrained=pretrained, allow_download=allow_download)
    else:
        model = spec.build()
    model.spec = spec
    source = getattr(model, "weights_source", "random initialisation (seed 0)")
    if pretrained and (spec.weights is not None or weights is not None):
        loaded = W.resolve(spec.weights, weights, allow_download)
        try:
            spec.load(model, loaded.state_dict)
        except RuntimeError as exc:
            raise TledgeError(f"weights from {loaded.source} do not fit {name}: "
                              f"{str(exc).splitlines()[0]}") from exc
        source = loaded.source
    return model.eval(), spec, source
