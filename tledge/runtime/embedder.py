"""Embed images with an exported tledge ONNX model through ONNX Runtime (no torch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tledge.artifact import EXPORT_HINT, ModelInfo, read_model, verify_fingerprint
from tledge.errors import ArtifactError
from tledge.runtime import providers as prov
from tledge.runtime.augment import pool_views, view_count, view_tensors
from tledge.runtime.images import check_rgb, load_image
from tledge.runtime.preprocess import preprocess_batch

log = logging.getLogger(__name__)

# A single-file ONNX model is one protobuf message, and protobuf cannot parse more than 2 GiB;
# anything larger is refused before a byte of it is read.
MAX_MODEL_BYTES = 2 * 1024**3


@dataclass
class Embedding:
    """One inference: L2-normalised embeddings (n, dim) and each head's probabilities."""

    vectors: np.ndarray
    heads: dict[str, np.ndarray] = field(default_factory=dict)


class Embedder:
    """Runs an exported model. Arrays passed in are RGB uint8 (H, W, 3); paths are decoded.

    ``providers``: ``"auto"`` (CUDA when it can really load, else CPU), ``"cpu"``, ``"cuda"``
    (an error if CUDA cannot run) or a list of ONNX Runtime provider names.
    ``threads``: intra-op threads (None lets ONNX Runtime decide).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: str | list[str] = "auto",
        threads: int | None = None,
        batch_size: int = 16,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(model_path)
        data, self.info = load_verified(self.path)
        wanted, strict = prov.requested(providers)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:  # the verified bytes themselves: no second read that could see another file
            self.session = ort.InferenceSession(data, options, providers=wanted)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"{self.path} is not a loadable ONNX model: {exc}") from exc
        del data
        self._check_io()
        self.provider = prov.check_active(self.session.get_providers(), wanted, strict)
        self.batch_size = max(1, batch_size)
        self._outputs = [self.info.output_name] + [h.output for h in self.info.heads]
        log.info("loaded %s on %s", self.info.describe(), self.provider)

    @property
    def dim(self) -> int:
        """Length of one embedding vector (e.g. 1280 for MobileNetV2)."""
        return self.info.embedding_dim

    @property
    def fingerprint(self) -> str:
        """The model's verified fingerprint; a gallery is bound to it."""
        return self.info.fingerprint

    def _check_io(self) -> None:
        """The graph's input is float32 (n, 3, crop, crop) and its outputs have the sizes the
        metadata states, wherever the graph's shapes are static."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if self.info.input_name not in inputs:
            raise ArtifactError(f"{self.path}: metadata names input {self.info.input_name!r} "
                                f"but the graph has {sorted(inputs)}")
        missing = {self.info.output_name, *(h.output for h in self.info.heads)} - set(outputs)
        if missing:
            raise ArtifactError(f"{self.path}: outputs {sorted(missing)} named in the metadata "
                                f"are not in the graph (it has {sorted(outputs)})")
        crop = self.info.preprocess.crop_size
        _check_shape(inputs[self.info.input_name], [None, 3, crop, crop], self.path)
        _check_shape(outputs[self.info.output_name], [None, self.info.embedding_dim], self.path)
        for head in self.info.heads:
            _check_shape(outputs[head.output], [None, len(head.labels)], self.path)

    def warmup(self) -> None:
        """Run one dummy batch so the first real inference is not the slow one."""
        size = self.info.preprocess.crop_size
        self._run_session(np.zeros((1, 3, size, size), np.float32))

    def embed(self, images: Iterable, progress: Callable[[int], None] | None = None,
              fast_resize: bool = False, augment: str = "none") -> np.ndarray:
        """Embed paths or RGB arrays -> float32 (n, dim), L2-normalised rows.

        ``fast_resize``: the cheaper live-frame resampling (see ``preprocess_one``).
        ``augment``: average each picture's views (``tledge.runtime.augment``) into its row;
        a gallery's own setting is applied by ``Gallery.enroll`` / ``Gallery.embed_queries``.
        """
        return self.run(images, progress, fast_resize, augment).vectors

    def run(self, images: Iterable, progress: Callable[[int], None] | None = None,
            fast_resize: bool = False, augment: str = "none") -> Embedding:
        """Like embed, also returning each head's probabilities (n, n_labels) by head name
        (with ``augment``: averaged over the views)."""
        n_views = view_count(augment)
        items = list(images)
        chunks: list[list[np.ndarray]] = []
        step = max(1, self.batch_size // n_views)  # about batch_size tensors per session run
        for start in range(0, len(items), step):
            batch = items[start:start + step]
            rgb = [_as_rgb(x, start + i) for i, x in enumerate(batch)]
            if n_views == 1:
                tensors = preprocess_batch(rgb, self.info.preprocess, fast_resize)
            else:
                tensors = np.stack([t for im in rgb for t in view_tensors(
                    im, augment, self.info.preprocess, fast_resize)])
            chunks.append(self._pool(self._run_session(tensors), n_views))
            if progress:
                progress(len(batch))
        if not chunks:
            empty = np.zeros((0, self.dim), np.float32)
            return Embedding(empty, {h.name: np.zeros((0, len(h.labels)), np.float32)
                                     for h in self.info.heads})
        outs = [np.concatenate(parts) for parts in zip(*chunks)]
        heads = {h.name: outs[i + 1] for i, h in enumerate(self.info.heads)}
        return Embedding(outs[0], heads)

    def embed_tensor(self, batch: np.ndarray) -> np.ndarray:
        """Run already-preprocessed float32 (n, 3, H, W) input; returns (n, dim)."""
        return self._run_session(batch)[0]

    @staticmethod
    def _pool(outs: list[np.ndarray], n_views: int) -> list[np.ndarray]:
        """Session outputs over ``n_views`` consecutive views per picture -> per picture."""
        if n_views == 1:
            return outs
        heads = [o.reshape(-1, n_views, o.shape[-1]).mean(axis=1) for o in outs[1:]]
        return [pool_views(outs[0], n_views), *heads]

    def _run_session(self, batch: np.ndarray) -> list[np.ndarray]:
        outs = self.session.run(self._outputs, {self.info.input_name: batch})
        outs = [np.asarray(o, dtype=np.float32) for o in outs]
        if not self.info.normalized:
            outs[0] = l2_normalize(outs[0])
        return outs


def load_verified(path: Path) -> tuple[bytes, ModelInfo]:
    """The model file's bytes and its metadata, after checking that the metadata's graph
    digest and fingerprint are those of this very file (``tledge.artifact``)."""
    if not path.is_file():
        raise ArtifactError(f"model file {path} not found; {EXPORT_HINT}")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise ArtifactError(f"{path} is {size / 1024**3:.1f} GiB; a tledge model is one ONNX "
                            f"file of at most {MAX_MODEL_BYTES // 1024**3} GiB")
    with open(path, "rb") as f:
        data = f.read(MAX_MODEL_BYTES + 1)  # bounded even if the file grew since stat()
    if len(data) > MAX_MODEL_BYTES:
        raise ArtifactError(f"{path} is larger than {MAX_MODEL_BYTES // 1024**3} GiB")
    try:
        digest, props = read_model(data)
    except ArtifactError as exc:
        raise ArtifactError(f"{path} is not a loadable ONNX model: {exc}") from None
    info = ModelInfo.from_metadata(props, source=str(path))
    verify_fingerprint(info, digest, str(path))
    return data, info


def _check_shape(arg, want: list[int | None], path: Path) -> None:
    """``arg`` (an ORT NodeArg) is a float32 tensor of rank ``len(want)`` whose static
    dimensions equal ``want``'s (None: any)."""
    if arg.type != "tensor(float)":
        raise ArtifactError(f"{path}: {arg.name!r} is {arg.type}; a tledge model takes and "
                            "gives float32 tensors")
    shape = list(arg.shape or [])
    if len(shape) != len(want):
        raise ArtifactError(f"{path}: {arg.name!r} has shape {shape}, expected rank "
                            f"{len(want)}")
    for got, expected in zip(shape, want):
        if expected is not None and isinstance(got, int) and got != expected:
            raise ArtifactError(
                f"{path}: {arg.name!r} has shape {shape} in the graph but the metadata "
                f"implies {['n' if w is None else w for w in want]}; the metadata does not "
                "describe this graph, re-export it with `tledge export`")


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _as_rgb(item, index: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return check_rgb(item, name=f"image #{index}")
    return load_image(item)
