"""Ensembles: several pretrained backbones in one ONNX graph, one embedding.

``tledge export --backbone mobilenet_v2+efficientnet_lite0`` names an ensemble: the members
run side by side on one input and their L2-normalised embeddings are concatenated, so the
cosine of two ensemble embeddings is the mean of the members' cosines. The file is an
ordinary tledge model (its own fingerprint, its own preprocessing in the metadata); the
runtime does not know it is an ensemble.

The input is the preprocessing of the member with the largest crop (its resize and crop for
every member); inside the graph each other member gets its own pixel normalisation (an exact
per-channel affine map) and, when its crop is smaller, a bilinear (antialiased) resize.
Members must agree on the colour order. Ensembles are for export and evaluation:
fine-tune a member, not the ensemble.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from tledge.artifact import Preprocess
from tledge.errors import TledgeError, WeightsError
from tledge.train.registry import Backbone, BackboneSpec, get_backbone, get_spec

SEPARATOR = "+"
MAX_MEMBERS = 4


class MemberInput(nn.Module):
    """The ensemble's normalised input -> one member's normalised input."""

    def __init__(self, outer: Preprocess, inner: Preprocess) -> None:
        super().__init__()
        o_mean, o_std = torch.tensor(outer.mean), torch.tensor(outer.std)
        i_mean, i_std = torch.tensor(inner.mean), torch.tensor(inner.std)
        # x_inner = (x_outer * o_std + o_mean - i_mean) / i_std = x_outer * scale + shift
        self.register_buffer("scale", (o_std / i_std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((o_mean - i_mean) / i_std).view(1, 3, 1, 1))
        self.identity = outer.mean == inner.mean and outer.std == inner.std
        self.size = None if inner.crop_size == outer.crop_size else inner.crop_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x if self.identity else x * self.scale + self.shift


class EnsembleBackbone(Backbone):
    """Members side by side; ``forward_features`` is the concatenation of their
    L2-normalised pooled embeddings (dim = the sum of theirs)."""

    def __init__(self, name: str, members: list[Backbone], outer: Preprocess) -> None:
        super().__init__(name, [], None, None, sum(m.dim for m in members))
        self.members = nn.ModuleList(members)
        self.inputs = nn.ModuleList(MemberInput(outer, m.preprocess) for m in members)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(m.forward_features(adapt(x)), dim=1)
                          for m, adapt in zip(self.members, self.inputs)], dim=1)

    def forward_from(self, x: torch.Tensor, start: int) -> torch.Tensor:
        raise _not_trainable(self.name)

    def forward_until(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        raise _not_trainable(self.name)

    def blocks(self) -> list[nn.Module]:
        raise _not_trainable(self.name)


def _not_trainable(name: str) -> TledgeError:
    return TledgeError(f"{name} is an ensemble: it is for export and evaluation only; "
                       "fine-tune or adapt one member backbone instead")


def member_names(name: str) -> list[str] | None:
    """The members of an ensemble name ("a+b"), or None when ``name`` is not one."""
    if SEPARATOR not in name:
        return None
    parts = name.split(SEPARATOR)
    if any(p != p.strip() for p in parts):
        raise TledgeError(f"ensemble {name!r}: write the names without spaces, e.g. "
                          "mobilenet_v2+efficientnet_lite0")
    if any(not p for p in parts):
        raise TledgeError(f"ensemble {name!r} has an empty member; write e.g. "
                          "mobilenet_v2+efficientnet_lite0")
    if len(parts) > MAX_MEMBERS:
        raise TledgeError(f"ensemble {name!r} has {len(parts)} members; at most {MAX_MEMBERS}")
    if len(set(parts)) != len(parts):
        raise TledgeError(f"ensemble {name!r} names a member twice")
    return parts


def spec_for(name: str) -> BackboneSpec | None:
    """A spec for an ensemble name (a resolver for ``registry.register_resolver``)."""
    parts = member_names(name)
    if parts is None:
        return None
    specs = [get_spec(p) for p in parts]  # raises on an unknown member, with a suggestion
    if len({s.preprocess.color_order for s in specs}) > 1:
        raise TledgeError(f"ensemble {name!r}: its members expect different colour orders "
                          "(RGB and BGR); pick members that agree")
    outer = max(specs, key=lambda s: s.preprocess.crop_size).preprocess
    threshold = sum(s.threshold for s in specs) / len(specs)  # cosine = mean of members'
    return BackboneSpec(
        name, functools.partial(_build, name, parts, outer), sum(s.dim for s in specs), outer,
        None,
        threshold=round(threshold, 4),
        summary="ensemble of " + ", ".join(parts) + " (concatenated normalised embeddings)",
        license="; ".join(f"{s.name}: {s.license}" for s in specs if s.license),
        trainable=False, members=tuple(parts))


def _build(name: str, parts: list[str], outer: Preprocess, pretrained: bool = True,
           allow_download: bool = False) -> EnsembleBackbone:
    members, sources = [], []
    for part in parts:
        try:  # each member's own verified weights
            backbone, _, source = get_backbone(part, pretrained, allow_download=allow_download)
        except WeightsError as exc:
            raise TledgeError(f"{name}: member {part}: {exc} (an ensemble takes no --weights: "
                              "install the member's weights, or use --allow-download)") from exc
        members.append(backbone)
        sources.append(f"{part}: {source}")
    model = EnsembleBackbone(name, members, outer)
    model.weights_source = "; ".join(sources)
    return model
