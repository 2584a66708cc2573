"""Export an embedding model to ONE self-describing ONNX file, then prove it matches PyTorch.

``export_model(output, options)``: path in, path out, fp32 only. The file is written next to
its final name and moved into place only after ``onnx.checker`` and the parity check pass, so
a failed export never leaves a half-written or unverified model behind. The whole pipeline
(fp32 reference, calibration checks, int8/fp16 reduction and the gate) is
``tledge.train.pipeline.export``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from tledge import __version__
from tledge.artifact import DEFAULT_BACKBONE, Head, ModelInfo
from tledge.errors import TledgeError
from tledge.train.backbones import get_backbone
from tledge.train.checkpoint import Checkpoint, CheckpointError, load
from tledge.train.data import image_files, load_batch
from tledge.train.metadata import write_model
from tledge.train.model import EmbeddingModel

log = logging.getLogger(__name__)


class ExportError(TledgeError):
    """The exported model failed a check; nothing was written at the output path."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export one backbone: its registry name, optional ``weights`` (a file; the
    backbone's offline pretrained weights by default; ``allow_download`` to fetch them), the
    parity check (up to ``parity_limit`` images from ``parity_images``, default the shipped
    samples; below ``min_cosine`` nothing is written), the ONNX ``opset`` and the default
    open-set ``threshold`` written into the metadata."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    allow_download: bool = False
    parity_images: Path | None = None     # default: the sample images tledge ships
    parity_limit: int = 50
    min_cosine: float = 0.9999
    opset: int = 18
    threshold: float | None = None        # default: the backbone's own


@dataclass
class ParityReport:
    """One verified fp32 export: where it is, its metadata, and its PyTorch-vs-ONNX parity
    (cosines over ``parity_images`` images). ``tledge.train.pipeline.export`` builds on it."""

    path: Path
    info: ModelInfo
    size_bytes: int
    parity_images: int
    min_cosine: float
    mean_cosine: float
    extra: dict = field(default_factory=dict)


def export_model(output: str | os.PathLike,
                 options: ExportOptions = ExportOptions()) -> ParityReport:
    """Build the backbone, export it and verify it; returns the parity report."""
    return export_embedding_model(*pretrained_model(options), Path(output), options)


def pretrained_model(options: ExportOptions) -> tuple[EmbeddingModel, ModelInfo]:
    """The backbone with its published (or ``options.weights``) weights, and its metadata."""
    backbone, spec, source = get_backbone(options.backbone, weights=options.weights,
                                          allow_download=options.allow_download)
    model = EmbeddingModel(backbone).eval()
    thr = spec.threshold if options.threshold is None else options.threshold
    info = ModelInfo(backbone=spec.name, embedding_dim=spec.dim, preprocess=spec.preprocess,
                     threshold=thr, weights=source)
    return model, info


def export_embedding_model(model: EmbeddingModel, info: ModelInfo, output: Path,
                           options: ExportOptions) -> ParityReport:
    """Export ``model`` with ``info`` as metadata to ``output``, verified by parity."""
    output = Path(output)
    if output.suffix != ".onnx":
        raise ExportError(f"output {output} should end in .onnx")
    output.parent.mkdir(parents=True, exist_ok=True)
    if [h.name for h in info.heads] != model.head_names:
        raise ExportError(f"metadata heads {[h.name for h in info.heads]} do not match the "
                          f"model's heads {model.head_names}")
    info = replace(info, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   tledge_version=__version__)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / output.name
        _to_onnx(model, info, staged, options.opset)
        paths = _parity_paths(options)
        min_cos, mean_cos = parity(model, staged, paths)
        if min_cos < options.min_cosine:
            raise ExportError(
                f"parity check failed: min cosine {min_cos:.6f} between PyTorch and ONNX Runtime "
                f"on {len(paths)} images is below {options.min_cosine}; the model was not written"
            )
        extra = {**info.extra, "parity": f"min_cosine={min_cos:.6f} mean={mean_cos:.6f} "
                                         f"images={len(paths)}"}
        info = _write_metadata(staged, replace(info, extra=extra))
        os.replace(staged, output)
    log.info("exported %s (%s)", output, info.describe())
    return ParityReport(output, info, output.stat().st_size, len(paths), min_cos, mean_cos)


def _to_onnx(model: EmbeddingModel, info: ModelInfo, path: Path, opset: int) -> None:
    size = info.preprocess.crop_size
    dummy = torch.randn(2, 3, size, size)
    names = [info.output_name] + [h.output for h in info.heads]
    batch = torch.export.Dim("batch", min=1, max=4096)
    chatter = io.StringIO()  # the exporter prints progress lines; keep them for --debug
    try:
        with contextlib.redirect_stdout(chatter):
            torch.onnx.export(model, (dummy,), str(path), input_names=[info.input_name],
                              output_names=names, dynamic_shapes=({0: batch},),
                              opset_version=opset, dynamo=True, external_data=False)
    except Exception as exc:  # the exporter raises many types; name the stage that failed
        raise ExportError(f"torch.onnx.export failed for {info.backbone}: {exc}") from exc
    log.debug("torch.onnx.export: %s", chatter.getvalue())
    _write_metadata(path, info)


def _write_metadata(path: Path, info: ModelInfo) -> ModelInfo:
    """Stamp the verifiable fingerprint (``tledge.train.metadata``); returns the stamped info."""
    import onnx

    proto = onnx.load(str(path))
    proto.producer_name = "tledge"
    return write_model(proto, info, path, check=True)


def _parity_paths(options: ExportOptions) -> list[Path]:
    from tledge.samples import sample_root

    folder = options.parity_images or sample_root()
    paths = image_files(folder, options.parity_limit)
    if not paths:
        raise ExportError(f"no images for the parity check in {folder}")
    return paths


def parity(model: EmbeddingModel, onnx_path: Path, paths: list[Path]) -> tuple[float, float]:
    """(min, mean) cosine between PyTorch and ONNX Runtime embeddings of ``paths``.

    PyTorch gets torchvision's transform; ONNX Runtime gets the runtime's own decoding and
    preprocessing from the file's metadata, so the whole chain is checked.
    """
    from tledge.runtime.embedder import Embedder

    embedder = Embedder(onnx_path, providers="cpu")
    cfg = embedder.info.preprocess
    with torch.no_grad():
        ref = torch.cat([model.embed(load_batch(paths[i:i + 16], cfg))
                         for i in range(0, len(paths), 16)]).numpy()
    got = embedder.embed(paths)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return float(cos.min()), float(cos.mean())


def export_checkpoint(run_dir: str | os.PathLike, output: str | os.PathLike,
                      options: ExportOptions = ExportOptions(),
                      centering: bool = True) -> ParityReport:
    """Export a training run's best checkpoint (finetune, adapt, multitask): the embedding
    (CL2N-centred unless ``centering`` is False) plus each of the run's linear heads as a
    named output ``<head>_probs``."""
    model, info = checkpoint_model(run_dir, options, centering)
    return export_embedding_model(model, info, Path(output), options)


def checkpoint_model(run_dir: str | os.PathLike, options: ExportOptions = ExportOptions(),
                     centering: bool = True) -> tuple[EmbeddingModel, ModelInfo]:
    """A run's best checkpoint as an exportable model, and its metadata."""
    ckpt = load_checkpoint(Path(run_dir))
    backbone, spec, _ = get_backbone(ckpt.backbone, pretrained=False)
    backbone.load_state_dict(ckpt.model)
    heads, head_meta = {}, []
    for name, head in ckpt.heads.items():
        heads[name] = torch.nn.Linear(backbone.dim, len(head.labels))
        heads[name].load_state_dict(head.state)
        head_meta.append(Head(name, tuple(head.labels), f"{name}_probs"))
    center = ckpt.center if centering else None
    model = EmbeddingModel(backbone, heads, center).eval()
    thr = ckpt.threshold(center is not None)
    thr = spec.threshold if thr is None else thr
    thr = thr if options.threshold is None else options.threshold
    info = ModelInfo(backbone=spec.name, embedding_dim=spec.dim, preprocess=spec.preprocess,
                     threshold=float(thr), heads=tuple(head_meta),
                     weights=f"{ckpt.kind}: {Path(run_dir).resolve()} ({ckpt.recipe})",
                     extra={"centering": "cl2n" if center is not None else "l2n"})
    return model, info


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The best checkpoint of a run directory (``tledge.train.checkpoint.load``)."""
    try:
        return load(run_dir)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
