"""The ``tledge.*`` metadata contract carried by every exported ONNX model.

Torch-free and onnx-free: it converts between a frozen dataclass and the flat
``{key: str}`` mapping stored in an ONNX model's ``metadata_props`` (written by
``tledge.train.metadata``, read by ``tledge.runtime.Embedder``), and it says what the
fingerprint is, so both halves compute it the same way.

Format 2 (this one) stores ``graph_digest``, a sha256 over the model file's bytes except its
description and metadata, and a ``fingerprint`` derived from that digest and everything in the
metadata that changes the vectors. The runtime recomputes both when it opens a model, so a
fingerprint is verified, never merely claimed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from tledge.errors import ArtifactError
from tledge.onnx_wire import graph_digest, read_model

__all__ = ["FORMAT_VERSION", "Head", "ModelInfo", "Preprocess", "graph_digest",
           "model_fingerprint", "read_model", "verify_fingerprint"]

FORMAT_VERSION = 2
PREFIX = "tledge."
RESIZE_MODES = ("shorter_side", "stretch")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PRECISIONS = ("fp32", "fp16", "int8")
COLOR_ORDERS = ("RGB", "BGR")
MAX_CROP = 4096
MAX_RESIZE = 2 * MAX_CROP
MAX_EMBEDDING_DIM = 65_536
# Pixels are scaled to [0, 1] before ``(x - mean) / std``: a std outside these bounds (1e-40
# passes "> 0") turns ordinary pixels into huge or infinite inputs, and NaN embeddings.
STD_BOUNDS = (1e-3, 1e3)
MAX_ABS_MEAN = 1e3
# The backbone `tledge export` and `tledge demo` use unless told otherwise, chosen by the
# frontier on held-out classes (docs/choosing-a-model.md): +7 points of all-way 1-shot over
# MobileNetV2 for ~1.2x its latency.
DEFAULT_BACKBONE = "efficientnet_lite0"
EXPORT_HINT = f"export one with `tledge export --backbone {DEFAULT_BACKBONE} --output model.onnx`"
REEXPORT_HINT = (
    "re-export it with `tledge export` (`--backbone NAME` or `--checkpoint RUN`; fp16/int8 "
    "copies with `tledge quantize`) and re-embed galleries built with it with "
    "`tledge gallery reembed --model NEW.onnx --gallery DIR`"
)


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
        if self.color_order not in COLOR_ORDERS:
            raise ArtifactError(f"color_order {self.color_order!r} must be 'RGB' or 'BGR'")
        if not (8 <= self.crop_size <= MAX_CROP and self.crop_size <= self.resize_size
                <= MAX_RESIZE):
            raise ArtifactError(
                f"crop_size {self.crop_size} / resize_size {self.resize_size} are not valid: "
                f"need 8 <= crop_size <= resize_size <= {MAX_RESIZE}, crop_size <= {MAX_CROP}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ArtifactError(f"mean {self.mean} / std {self.std} need 3 values each")
        low, high = STD_BOUNDS
        if not all(math.isfinite(v) and low <= v <= high for v in self.std):
            raise ArtifactError(f"std {self.std} is out of range: each value must be between "
                                f"{low:g} and {high:g}")
        if not all(math.isfinite(v) and abs(v) <= MAX_ABS_MEAN for v in self.mean):
            raise ArtifactError(f"mean {self.mean} is out of range: each value must be between "
                                f"{-MAX_ABS_MEAN:g} and {MAX_ABS_MEAN:g}")


@dataclass(frozen=True)
class Head:
    """An extra named output of the model: class probabilities over ``labels``."""

    name: str
    labels: tuple[str, ...]
    output: str


@dataclass(frozen=True)
class ModelInfo:
    """Everything the runtime needs to know about an exported embedding model.

    ``fingerprint`` and ``graph_digest`` are empty until ``tledge.train.metadata`` stamps
    them from the serialised graph; a model file always carries both.
    """

    backbone: str
    embedding_dim: int
    fingerprint: str = ""
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
    graph_digest: str = ""

    def validate(self) -> None:
        self.preprocess.validate()
        if not 1 <= self.embedding_dim <= MAX_EMBEDDING_DIM:
            raise ArtifactError(f"embedding_dim must be positive and at most "
                                f"{MAX_EMBEDDING_DIM}, got {self.embedding_dim}")
        if self.precision not in PRECISIONS:
            raise ArtifactError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if not (math.isfinite(self.threshold) and -1.0 <= self.threshold <= 1.0):
            raise ArtifactError(f"threshold {self.threshold} must be a cosine in [-1, 1]")
        if not self.input_name or not self.output_name:
            raise ArtifactError("the model's input_name and output_name must not be empty")
        for head in self.heads:
            if not head.name or not head.output or not head.labels or not all(head.labels):
                raise ArtifactError(f"head {head.name!r} needs a name, an output and "
                                    "non-empty labels")
        for name in ("fingerprint", "graph_digest"):
            if not _is_sha256(getattr(self, name)):
                raise ArtifactError(f"the model's {name} is missing or not a sha256 hex "
                                    f"digest; {EXPORT_HINT}")

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
        """Parse and validate; raise ArtifactError naming ``source`` when it is not ours.

        Only ArtifactError escapes, whatever the values are (they come from a file).
        """
        ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not ours:
            raise ArtifactError(f"{source} has no tledge metadata; {EXPORT_HINT}")
        _check_version(ours.get("format_version", "0"), source)
        try:
            info = cls._parse(ours)
        except (KeyError, ValueError, TypeError, RecursionError) as exc:
            raise ArtifactError(
                f"{source} has broken tledge metadata ({type(exc).__name__}: "
                f"{str(exc)[:200]}); {EXPORT_HINT}") from exc
        info.validate()
        return info

    @classmethod
    def _parse(cls, ours: dict[str, str]) -> ModelInfo:
        heads = json.loads(ours["heads"])
        if not isinstance(heads, list):
            raise TypeError("heads must be a JSON list")
        extra = {k[len("extra."):]: v for k, v in ours.items() if k.startswith("extra.")}
        return cls(
            backbone=ours["backbone"],
            embedding_dim=_int(ours["embedding_dim"]),
            fingerprint=ours["fingerprint"],
            preprocess=_preprocess(ours["preprocess"]),
            input_name=ours["input_name"],
            output_name=ours["output_name"],
            normalized=_typed(json.loads(ours["normalized"]), bool, "normalized"),
            precision=ours["precision"],
            threshold=float(ours["threshold"]),
            heads=tuple(_head(h) for h in heads),
            weights=ours.get("weights", ""),
            created=ours.get("created", ""),
            tledge_version=ours.get("tledge_version", ""),
            extra=extra,
            format_version=_int(ours["format_version"]),
            graph_digest=ours["graph_digest"],
        )

    def describe(self) -> str:
        """One line for logs and the GUI."""
        p = self.preprocess
        return (
            f"{self.backbone} ({self.precision}, {self.embedding_dim}-d, "
            f"{p.crop_size}px {p.color_order}, fingerprint {self.fingerprint[:12]})"
        )


def model_fingerprint(digest: str, info: ModelInfo) -> str:
    """sha256 of a canonical JSON of the graph digest and every metadata value that changes
    the vectors (preprocessing, precision, size, input/output names, normalisation).

    Two model files share a fingerprint only if they turn the same pixels into the same
    vectors; ints and floats are canonicalised so a metadata round trip never changes it.
    """
    p = info.preprocess
    payload = {
        "format": FORMAT_VERSION, "graph_digest": digest,
        "preprocess": {"crop_size": int(p.crop_size), "resize_size": int(p.resize_size),
                       "resize_mode": p.resize_mode, "interpolation": p.interpolation,
                       "mean": [float(v) for v in p.mean], "std": [float(v) for v in p.std],
                       "color_order": p.color_order},
        "precision": info.precision, "embedding_dim": int(info.embedding_dim),
        "input_name": info.input_name, "output_name": info.output_name,
        "normalized": bool(info.normalized),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def verify_fingerprint(info: ModelInfo, digest: str, source: str) -> None:
    """Raise ArtifactError unless ``info`` matches ``digest`` (the file's own graph digest)."""
    if digest != info.graph_digest:
        raise ArtifactError(
            f"{source}: its weights or graph changed after tledge exported it (graph digest "
            f"{digest[:12]}, metadata says {info.graph_digest[:12]}), e.g. re-quantised or "
            "edited by another tool; its fingerprint would be a false claim. Re-export it with "
            "`tledge export`, or make fp16/int8 copies with `tledge quantize`"
        )
    if model_fingerprint(digest, info) != info.fingerprint:
        raise ArtifactError(
            f"{source}: its preprocessing or output metadata (colour order, mean/std, sizes, "
            "precision, names) was edited after export and no longer matches its fingerprint "
            f"{info.fingerprint[:12]}; re-export it with `tledge export`"
        )


def _check_version(raw: str, source: str) -> None:
    try:
        version = int(raw)
    except ValueError:
        raise ArtifactError(f"{source} has a broken tledge.format_version {raw[:20]!r}; "
                            f"{EXPORT_HINT}") from None
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{source} uses tledge format {version}, newer than this tledge supports "
            f"({FORMAT_VERSION}); upgrade tledge"
        )
    if version < FORMAT_VERSION:
        raise ArtifactError(
            f"{source} was exported by an older tledge (format {version}); its fingerprint "
            f"cannot be verified against its weights. {REEXPORT_HINT[0].upper()}"
            f"{REEXPORT_HINT[1:]}"
        )


def _preprocess(raw: str) -> Preprocess:
    pre = json.loads(raw)
    if not isinstance(pre, dict):
        raise TypeError("preprocess must be a JSON object")
    out = Preprocess(**pre)
    return Preprocess(
        crop_size=_typed(out.crop_size, int, "crop_size"),
        resize_size=_typed(out.resize_size, int, "resize_size"),
        resize_mode=_typed(out.resize_mode, str, "resize_mode"),
        interpolation=_typed(out.interpolation, str, "interpolation"),
        mean=_floats(out.mean, "mean"), std=_floats(out.std, "std"),
        color_order=_typed(out.color_order, str, "color_order"),
    )


def _head(raw: Any) -> Head:
    if not isinstance(raw, dict) or not isinstance(raw.get("labels"), list):
        raise TypeError("each head must be an object with a list of labels")
    labels = tuple(_typed(x, str, "head label") for x in raw["labels"])
    return Head(_typed(raw["name"], str, "head name"), labels,
                _typed(raw["output"], str, "head output"))


def _typed(value: Any, kind: type, name: str) -> Any:
    # bool is an int subclass: a JSON true must not pass as a size, nor 1 as a flag.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{name} must be {kind.__name__}, got {value!r:.40}")
    return value


def _floats(value: Any, name: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"{name} must be a list of numbers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"{name} must be a list of numbers, got {v!r:.40}")
    return tuple(float(v) for v in value)


def _int(raw: str) -> int:
    return _typed(json.loads(raw), int, "integer value")


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _encode(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)
