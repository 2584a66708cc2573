"""The gallery's derived search structures: a FAISS index over samples and class prototypes.

Never the only copy of anything: built from the SQLite store, cached in ``index.npz`` next
to it (written atomically, tagged with the store's generation) and rebuilt when stale.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _faiss():
    import faiss

    return faiss


@dataclass
class VectorIndex:
    """Exact inner-product search over L2-normalised sample embeddings.

    ``sample_ids``/``class_ids``: (n,) int64 aligned with the FAISS rows. Prototypes are the
    re-normalised per-class sums ``sums`` (c, dim) for ``proto_ids`` (c,).
    """

    generation: int
    dim: int
    sample_ids: np.ndarray
    class_ids: np.ndarray
    index: object
    proto_ids: np.ndarray
    sums: np.ndarray
    _protos: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(cls, generation: int, sample_ids: np.ndarray, class_ids: np.ndarray,
              vectors: np.ndarray) -> VectorIndex:
        dim = vectors.shape[1]
        index = _faiss().IndexFlatIP(dim)
        if len(vectors):
            index.add(np.ascontiguousarray(vectors, np.float32))
        proto_ids, inverse = np.unique(class_ids, return_inverse=True)
        sums = np.zeros((len(proto_ids), dim), np.float64)
        np.add.at(sums, inverse, vectors)
        return cls(generation, dim, sample_ids, class_ids, index, proto_ids, sums)

    def add(self, generation: int, sample_ids: np.ndarray, class_id: int,
            vectors: np.ndarray) -> None:
        """Append one class's new samples without a rebuild."""
        self.index.add(np.ascontiguousarray(vectors, np.float32))
        self.sample_ids = np.concatenate([self.sample_ids, sample_ids])
        self.class_ids = np.concatenate([self.class_ids, np.full(len(sample_ids), class_id)])
        where = np.flatnonzero(self.proto_ids == class_id)
        if len(where):
            self.sums[where[0]] += vectors.sum(axis=0)
        else:
            self.proto_ids = np.append(self.proto_ids, class_id)
            self.sums = np.vstack([self.sums, vectors.sum(axis=0, keepdims=True)])
        self.generation = generation
        self._protos = None

    @property
    def size(self) -> int:
        return len(self.sample_ids)

    def prototypes(self) -> np.ndarray:
        """(c, dim) float32 unit class means, computed once per change."""
        if self._protos is None:
            norms = np.linalg.norm(self.sums, axis=1, keepdims=True)
            self._protos = (self.sums / np.maximum(norms, 1e-12)).astype(np.float32)
        return self._protos

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k samples per query: (scores (q, k), row positions (q, k); -1 where none)."""
        k = max(1, min(k, self.size)) if self.size else 1
        if not self.size:
            q = len(queries)
            return np.full((q, 1), -1.0, np.float32), np.full((q, 1), -1, np.int64)
        return self.index.search(np.ascontiguousarray(queries, np.float32), k)

    def save(self, path: Path) -> None:
        """Write atomically: a reader sees the old cache or the new one, never a mix."""
        data = _faiss().serialize_index(self.index)
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, generation=self.generation, sample_ids=self.sample_ids,
                         class_ids=self.class_ids, proto_ids=self.proto_ids, sums=self.sums,
                         index=np.asarray(data, np.uint8))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not write index cache %s (%s); it will be rebuilt", path, exc)
            Path(tmp).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, generation: int, dim: int) -> VectorIndex | None:
        """The cached index if it exists, is readable and matches ``generation``."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["generation"]) != generation:
                    return None
                index = _faiss().deserialize_index(z["index"])
                cached = cls(generation, dim, z["sample_ids"], z["class_ids"], index,
                             z["proto_ids"], z["sums"])
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("index cache %s is unreadable (%s); rebuilding it", path, exc)
            return None
        if cached.index.d != dim or cached.index.ntotal != len(cached.sample_ids):
            return None
        return cached
