"""Any torchvision classification model as a backbone, by its torchvision name.

The weights are torchvision's DEFAULT ones, found in the torch hub cache or downloaded
when the user allows it. The last Linear layer becomes the classifier; what feeds it is the
pooled embedding. The whole trunk is one stage, so partial fine-tuning is all or nothing.
``spec_for`` is a resolver (``registry.register_resolver``): it reads the input size from
torchvision's weights entry and the embedding size from the network built on the ``meta``
device (module structure only: no weights allocated or initialised), so asking for a spec
does not build the network a second time.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from tledge.artifact import Preprocess
from tledge.train import weights as W
from tledge.train.registry import Backbone, BackboneSpec

_INTERP = {"InterpolationMode.BILINEAR": "bilinear", "InterpolationMode.BICUBIC": "bicubic",
           "InterpolationMode.NEAREST": "nearest"}


def spec_for(name: str) -> BackboneSpec | None:
    """A spec for torchvision classification model ``name``, or None if there is none."""
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        return None
    weights = tvm.get_model_weights(name).DEFAULT
    tf = weights.transforms()
    crop = tf.crop_size[0]
    resize = tf.resize_size[0]
    pre = Preprocess(crop, max(resize, crop), mean=tuple(tf.mean), std=tuple(tf.std),
                     interpolation=_INTERP.get(str(tf.interpolation), "bilinear"))
    filename = weights.url.rsplit("/", 1)[-1]
    prefix = filename.rsplit("-", 1)[-1].split(".")[0]
    wspec = W.WeightsSpec(filename, prefix, f"torchvision {name} {weights.name}", url=weights.url)
    with torch.device("meta"):  # shapes only: nothing allocated, no initialisation run
        dim = _last_linear(tvm.get_model(name, weights=None))[1].in_features
    meta = weights.meta
    return BackboneSpec(
        name, partial(_build, name), dim, pre, wspec, threshold=0.7,
        summary=f"torchvision {name} ({meta.get('num_params', 0) / 1e6:.1f} M params)",
        license="see torchvision model documentation", load=_load)


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError("model has no Linear classifier")
    return found[-1]


def _build(name: str) -> Backbone:
    import torchvision.models as tvm

    net = tvm.get_model(name, weights=None)
    path, linear = _last_linear(net)
    parent = net.get_submodule(path.rsplit(".", 1)[0]) if "." in path else net
    setattr(parent, path.rsplit(".", 1)[-1], nn.Identity())
    # torchvision's forward() pools and flattens itself: one stage, no extra pooling.
    model = Backbone(name, [net], nn.Identity(), linear, linear.in_features)
    model.linear_path = path
    return model


def _load(model: Backbone, state: dict) -> None:
    """Split torchvision's state dict between the trunk and the moved-out Linear."""
    head = model.linear_path + "."
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    cls = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
    model.stages[0].load_state_dict(body)
    model.classifier.load_state_dict(cls)
