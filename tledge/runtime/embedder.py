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
from tledge.onnx_wire import ExternalDataError
from tledge.runtime import providers as prov
from tledge.runtime.augment import pool_views, view_count, view_tensors
from tledge.runtime.cpu import int8_weight_warning
from tledge.runtime.images import check_rgb, load_image
from tledge.runtime.preprocess import preprocess_batch

log = logging.getLogger(__name__)

# A single-file ONNX model is one protobuf message, and protobuf cannot parse more than 2 GiB;
# anything larger is refused before a byte of it is read.
MAX_MODEL_BYTES = 2 * 1024**3
MAX_THREADS = 256  # intra-op threads; more only adds memory (each has its own stack)
# A model that says its rows are unit length must give norms this close to 1 (or exactly 0:
# a zero row stays zero); fp16 compute rounds each element to ~5e-4, so it gets more room.
NORM_TOLERANCE = {"fp32": 1e-3, "int8": 1e-3, "fp16": 1e-2}


class ModelOutputError(ArtifactError):
    """The model turned an image into a vector that is not a usable embedding (NaN, inf)."""


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

        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 0 <= threads <= MAX_THREADS):
            raise ArtifactError(f"threads must be a whole number from 1 to {MAX_THREADS} "
                                f"(None or 0 lets ONNX Runtime decide), got {threads!r}")
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
        if self.info.precision == "int8":
            warning = int8_weight_warning(self.info.extra, self.provider)
            if warning:
                log.warning("%s: %s", self.path.name, warning)

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
            names = [_name(x, start + i) for i, x in enumerate(batch)]
            if n_views == 1:
                tensors = preprocess_batch(rgb, self.info.preprocess, fast_resize)
            else:
                tensors = np.stack([t for im in rgb for t in view_tensors(
                    im, augment, self.info.preprocess, fast_resize)])
            views = [n for n in names for _ in range(n_views)]
            chunks.append(self._pool(self._run_session(tensors, views), n_views))
            if progress:
                progress(len(batch))
        if not chunks:
            empty = np.zeros((0, self.dim), np.float32)
            return Embedding(empty, {h.name: np.zeros((0, len(h.labels)), np.float32)
                                     for h in self.info.heads})
        outs = [np.concatenate(parts) for parts in zip(*chunks)]
        heads = {h.name: outs[i + 1] for i, h in enumerate(self.info.heads)}
        return Embedding(outs[0], heads)

    def embed_tensor(self, batch: np.ndarray, names: list[str] | None = None) -> np.ndarray:
        """Run already-preprocessed float32 (n, 3, H, W) input; returns (n, dim).
        ``names`` (one per row) name the images in a ModelOutputError."""
        return self._run_session(batch, names)[0]

    def _check_rows(self, outs: list[np.ndarray], names: list[str]) -> None:
        """Raise ModelOutputError naming the first image whose outputs (one row per name) are
        not finite, or whose embedding is not unit length when the model says it is: such
        rows would poison a gallery or every match against it."""
        finite = np.all([np.isfinite(o).all(axis=-1) for o in outs], axis=0)
        norms = np.linalg.norm(np.where(np.isfinite(outs[0]), outs[0], 0), axis=-1)
        tol = NORM_TOLERANCE.get(self.info.precision, 1e-3)
        unit = ~np.asarray(self.info.normalized) | (np.abs(norms - 1) <= tol) | (norms == 0)
        bad = np.flatnonzero(~(finite & unit))
        if bad.size:
            i = int(bad[0])
            what = ("non-finite output (NaN or infinity)" if not finite[i] else
                    f"an embedding of length {norms[i]:.4g} though its metadata says rows are "
                    "unit length")
            raise ModelOutputError(f"{self.path}: the model produced {what} for {names[i]}; "
                                   "it cannot be used for this image, and a model that does "
                                   "this for ordinary images needs re-exporting")

    @staticmethod
    def _pool(outs: list[np.ndarray], n_views: int) -> list[np.ndarray]:
        """Session outputs over ``n_views`` consecutive views per picture -> per picture."""
        if n_views == 1:
            return outs
        heads = [o.reshape(-1, n_views, o.shape[-1]).mean(axis=1) for o in outs[1:]]
        return [pool_views(outs[0], n_views), *heads]

    def _run_session(self, batch: np.ndarray, names: list[str] | None = None
                     ) -> list[np.ndarray]:
        """The session's outputs for ``batch``, checked (``names``: one per row, for errors)
        and with the embedding rows L2-normalised."""
        outs = self.session.run(self._outputs, {self.info.input_name: batch})
        outs = [np.asarray(o, dtype=np.float32) for o in outs]
        self._check_rows(outs, names or [f"input row #{i}" for i in range(len(outs[0]))])
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
        digest, props = read_model(data, source=f"model {path}")
    except ExternalDataError:
        raise
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


def _name(item, index: int) -> str:
    """How an error names an input: its path, or its position for an array."""
    return f"image #{index}" if isinstance(item, np.ndarray) else f"image {item}"


def _as_rgb(item, index: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return check_rgb(item, name=f"image #{index}")
    return load_image(item)
