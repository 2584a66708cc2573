"""Embed images with an exported tledge ONNX model through ONNX Runtime (no torch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tledge.artifact import EXPORT_HINT, ModelInfo
from tledge.errors import ArtifactError
from tledge.runtime import providers as prov
from tledge.runtime.images import check_rgb, load_image
from tledge.runtime.preprocess import preprocess_batch

log = logging.getLogger(__name__)


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
        if not self.path.is_file():
            raise ArtifactError(f"model file {self.path} not found; {EXPORT_HINT}")
        wanted, strict = prov.requested(providers)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"{self.path} is not a loadable ONNX model: {exc}") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(props, source=str(self.path))
        self._check_io()
        self.provider = prov.check_active(self.session.get_providers(), wanted, strict)
        self.batch_size = max(1, batch_size)
        self._outputs = [self.info.output_name] + [h.output for h in self.info.heads]
        log.info("loaded %s on %s", self.info.describe(), self.provider)

    @property
    def dim(self) -> int:
        return self.info.embedding_dim

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if self.info.input_name not in inputs:
            raise ArtifactError(f"{self.path}: metadata names input {self.info.input_name!r} "
                                f"but the graph has {sorted(inputs)}")
        missing = {self.info.output_name, *(h.output for h in self.info.heads)} - outputs
        if missing:
            raise ArtifactError(f"{self.path}: outputs {sorted(missing)} named in the metadata "
                                f"are not in the graph (it has {sorted(outputs)})")

    def warmup(self) -> None:
        """Run one dummy batch so the first real inference is not the slow one."""
        size = self.info.preprocess.crop_size
        self._run_session(np.zeros((1, 3, size, size), np.float32))

    def embed(self, images: Iterable, progress: Callable[[int], None] | None = None,
              fast_resize: bool = False) -> np.ndarray:
        """Embed paths or RGB arrays -> float32 (n, dim), L2-normalised rows.

        ``fast_resize``: the cheaper live-frame resampling (see ``preprocess_one``).
        """
        return self.run(images, progress, fast_resize).vectors

    def run(self, images: Iterable, progress: Callable[[int], None] | None = None,
            fast_resize: bool = False) -> Embedding:
        """Like embed, also returning each head's probabilities (n, n_labels) by head name."""
        items = list(images)
        chunks: list[list[np.ndarray]] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            rgb = [_as_rgb(x, start + i) for i, x in enumerate(batch)]
            chunks.append(self._run_session(preprocess_batch(rgb, self.info.preprocess,
                                                             fast_resize)))
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

    def _run_session(self, batch: np.ndarray) -> list[np.ndarray]:
        outs = self.session.run(self._outputs, {self.info.input_name: batch})
        outs = [np.asarray(o, dtype=np.float32) for o in outs]
        if not self.info.normalized:
            outs[0] = l2_normalize(outs[0])
        return outs


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _as_rgb(item, index: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return check_rgb(item, name=f"image #{index}")
    return load_image(item)
