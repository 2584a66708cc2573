"""The ``tledge.*`` metadata contract carried by every exported ONNX model.

Torch-free and onnx-free: it converts between a frozen dataclass and the flat
``{key: str}`` mapping stored in an ONNX model's ``metadata_props`` (written by
``tledge.train.export``, read by ``tledge.runtime.Embedder`` through ONNX Runtime).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tledge.errors import ArtifactError

FORMAT_VERSION = 1
PREFIX = "tledge."
RESIZE_MODES = ("shorter_side", "stretch")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_HINT = "export one with `tledge export --backbone mobilenet_v2 --output model.onnx`"


@dataclass(frozen=True)
class Preprocess:
    """How an RGB uint8 image becomes the model's float32 NCHW input.

    ``shorter_side``: resize so the shorter side is ``resize_size``, then centre-crop
    ``crop_size`` (torchvision's ``Resize(int)`` + ``CenterCrop``). ``stretch``: resize
    straight to ``crop_size`` x ``crop_size``. Then ``(x / 255 - mean) / std`` per channel.
    """

    crop_size: int = 224
    resize_size: int = 256
    resize_mode: str = "shorter_side"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    color_order: str = "RGB"

    def validate(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ArtifactError(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ArtifactError(
                f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}"
            )
        if self.color_order not in ("RGB", "BGR"):
            raise ArtifactError(f"color_order {self.color_order!r} must be 'RGB' or 'BGR'")
        if not 8 <= self.crop_size <= 4096 or self.resize_size < self.crop_size:
            raise ArtifactError(
                f"crop_size {self.crop_size} / resize_size {self.resize_size} are not valid: "
                "need 8 <= crop_size <= resize_size"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ArtifactError(f"mean {self.mean} / std {self.std} need 3 values, std > 0")


@dataclass(frozen=True)
class Head:
    """An extra named output of the model: class probabilities over ``labels``."""

    name: str
    labels: tuple[str, ...]
    output: str


@dataclass(frozen=True)
class ModelInfo:
    """Everything the runtime needs to know about an exported embedding model."""

    backbone: str
    embedding_dim: int
    fingerprint: str
    preprocess: Preprocess = field(default_factory=Preprocess)
    input_name: str = "images"
    output_name: str = "embedding"
    normalized: bool = True
    precision: str = "fp32"
    threshold: float = 0.5
    heads: tuple[Head, ...] = ()
    weights: str = ""
    created: str = ""
    tledge_version: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def validate(self) -> None:
        self.preprocess.validate()
        if self.embedding_dim <= 0:
            raise ArtifactError(f"embedding_dim must be positive, got {self.embedding_dim}")
        if self.precision not in PRECISIONS:
            raise ArtifactError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ArtifactError(f"threshold {self.threshold} must be a cosine in [-1, 1]")
        if not self.fingerprint:
            raise ArtifactError("the model has an empty fingerprint; " + EXPORT_HINT)

    def to_metadata(self) -> dict[str, str]:
        """Flatten to ``{"tledge.key": "value"}`` strings for ONNX ``metadata_props``."""
        self.validate()
        raw = asdict(self)
        extra = raw.pop("extra")
        out = {PREFIX + k: _encode(v) for k, v in raw.items()}
        out.update({PREFIX + "extra." + k: str(v) for k, v in extra.items()})
        return out

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str = "model") -> ModelInfo:
        """Parse and validate; raise ArtifactError naming ``source`` when it is not ours."""
        ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not ours:
            raise ArtifactError(f"{source} has no tledge metadata; {EXPORT_HINT}")
        version = int(ours.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"{source} uses tledge format {version}, newer than this tledge supports "
                f"({FORMAT_VERSION}); upgrade tledge"
            )
        try:
            info = cls._parse(ours)
        except (KeyError, ValueError, TypeError) as exc:
            raise ArtifactError(
                f"{source} has broken tledge metadata ({exc}); {EXPORT_HINT}") from exc
        info.validate()
        return info

    @classmethod
    def _parse(cls, ours: dict[str, str]) -> ModelInfo:
        pre = json.loads(ours["preprocess"])
        pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
        heads = tuple(
            Head(h["name"], tuple(h["labels"]), h["output"]) for h in json.loads(ours["heads"])
        )
        extra = {k[len("extra."):]: v for k, v in ours.items() if k.startswith("extra.")}
        return cls(
            backbone=ours["backbone"],
            embedding_dim=int(ours["embedding_dim"]),
            fingerprint=ours["fingerprint"],
            preprocess=Preprocess(**pre),
            input_name=ours["input_name"],
            output_name=ours["output_name"],
            normalized=json.loads(ours["normalized"]),
            precision=ours["precision"],
            threshold=float(ours["threshold"]),
            heads=heads,
            weights=ours.get("weights", ""),
            created=ours.get("created", ""),
            tledge_version=ours.get("tledge_version", ""),
            extra=extra,
            format_version=int(ours["format_version"]),
        )

    def describe(self) -> str:
        """One line for logs and the GUI."""
        p = self.preprocess
        return (
            f"{self.backbone} ({self.precision}, {self.embedding_dim}-d, "
            f"{p.crop_size}px {p.color_order}, fingerprint {self.fingerprint[:12]})"
        )


def _encode(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)
