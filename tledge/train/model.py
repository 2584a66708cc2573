"""The exported network: backbone -> pooled embedding -> (centred) L2-normalised output,
plus optional named heads that hang off the pooled embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tledge.train.backbones import Backbone


class EmbeddingModel(nn.Module):
    """(n, 3, H, W) float32 -> (embedding (n, dim), *head probabilities (n, labels_i)).

    ``center`` (dim,) is subtracted before normalising (SimpleShot's CL2N) when given.
    ``heads`` map a name to a module from the pooled embedding to logits.
    """

    def __init__(self, backbone: Backbone, heads: dict[str, nn.Module] | None = None,
                 center: torch.Tensor | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        # Module keys are positional: a head may be called anything ("class" included, which
        # as an attribute name would break the exporter's generated code).
        self.head_names = list(heads or {})
        self.heads = nn.ModuleDict({f"head{i}": m for i, m in enumerate((heads or {}).values())})
        self.register_buffer("center", center if center is not None else torch.zeros(0),
                             persistent=True)

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def _normalised(self, pooled: torch.Tensor) -> torch.Tensor:
        feats = pooled - self.center if self.center.numel() else pooled
        return F.normalize(feats, dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalised(self.backbone.forward_features(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled = self.backbone.forward_features(x)
        outs = [self._normalised(pooled)]
        outs += [torch.softmax(head(pooled), dim=1) for head in self.heads.values()]
        return tuple(outs)

