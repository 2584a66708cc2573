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


# Exact search below this many samples (~15 ms per query at 20k x 1280-d on 2 cores); an
# inverted-file index with 8-bit scalar-quantised vectors (IVF-SQ8) beyond it: a quarter of
# the memory and about twice as fast per scanned vector as float storage, for a recall loss
# the nprobe tuning makes up. Class prototypes are always exact (one row per class).
APPROX_FROM = 20_000
IVF_TRAIN_PER_LIST = 40           # k-means training points per list (FAISS wants >= 39)
TARGET_RECALL = 0.97              # nprobe is the least that finds this share of true top-1s
TUNE_QUERIES = 200
KMEANS_ITERATIONS = 10            # enough for list assignment; FAISS's 25 costs 2.5x the time
NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
REBUILD_GROWTH = 4.0              # re-train the IVF once the gallery has grown this much


def _faiss():
    import faiss

    return faiss


def ivf_lists(n: int) -> int:
    """Inverted lists for ``n`` vectors: ~2 sqrt(n), a power of two, 64..8192."""
    return int(min(8192, max(64, 2 ** round(np.log2(2 * np.sqrt(max(n, 1)))))))


def tune_nprobe(index, vectors: np.ndarray, target: float = TARGET_RECALL,
                seed: int = 0) -> tuple[int, float]:
    """Set the least ``nprobe`` (of NPROBE_LADDER) whose recall@1 against exact search reaches
    ``target`` for leave-one-out queries: sampled gallery vectors looking for their nearest
    *other* sample, as a new photo of an enrolled object does. Returns (nprobe, recall)."""
    rng = np.random.default_rng(seed)
    n = len(vectors)
    ids = rng.choice(n, min(TUNE_QUERIES, n), replace=False)
    q = np.ascontiguousarray(vectors[ids], np.float32)
    truth = _exact_top2(q, vectors)
    truth = np.where(truth[:, 0] == ids, truth[:, 1], truth[:, 0])
    recall = 0.0
    for nprobe in [p for p in NPROBE_LADDER if p < index.nlist] + [index.nlist]:
        index.nprobe = nprobe
        got = index.search(q, 2)[1]
        got = np.where(got[:, 0] == ids, got[:, 1], got[:, 0])
        recall = float((got == truth).mean())
        if recall >= target:
            break
    return int(index.nprobe), recall


def _exact_top2(q: np.ndarray, vectors: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """(len(q), 2) rows of the two best inner products, by brute force in chunks."""
    best = np.full((len(q), 2), -np.inf, np.float32)
    arg = np.zeros((len(q), 2), np.int64)
    for start in range(0, len(vectors), chunk):
        sims = q @ vectors[start:start + chunk].T
        top = np.argpartition(-sims, 1, axis=1)[:, :2] if sims.shape[1] > 1 else \
            np.zeros((len(q), 1), np.int64)
        vals = np.take_along_axis(sims, top, 1)
        allv = np.concatenate([best, vals], 1)
        alli = np.concatenate([arg, top + start], 1)
        order = np.argsort(-allv, axis=1)[:, :2]
        best, arg = np.take_along_axis(allv, order, 1), np.take_along_axis(alli, order, 1)
    return arg


def build_faiss(vectors: np.ndarray, approx_from: int = APPROX_FROM, seed: int = 0):
    """An exact ``IndexFlatIP`` for small ``vectors`` (n, dim), else a trained IVF-SQ8 index
    (inner product) holding them, its ``nprobe`` tuned for TARGET_RECALL (``tune_nprobe``)."""
    faiss = _faiss()
    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, np.float32)
    if n < approx_from:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = ivf_lists(n)
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist,
                                              faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = KMEANS_ITERATIONS
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(n, min(n, nlist * IVF_TRAIN_PER_LIST), replace=False))]
        index.cp.seed = seed
        index.train(sample)
    if n:
        index.add(vectors)
    if n >= approx_from:
        nprobe, recall = tune_nprobe(index, vectors, seed=seed)
        log.info("IVF index: %d lists, nprobe %d (recall@1 %.3f on %d leave-one-out queries)",
                 index.nlist, nprobe, recall, TUNE_QUERIES)
    return index


def index_kind(index) -> str:
    return "exact" if index.__class__.__name__ == "IndexFlatIP" else (
        f"ivf-sq8(nlist={index.nlist}, nprobe={index.nprobe})")


@dataclass
class VectorIndex:
    """Inner-product search over L2-normalised sample embeddings: exact while small, an IVF
    index beyond ``APPROX_FROM`` samples (see ``build_faiss``).

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
    trained_size: int = 0     # samples when the index structure was chosen and trained
    _protos: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(cls, generation: int, sample_ids: np.ndarray, class_ids: np.ndarray,
              vectors: np.ndarray, approx_from: int = APPROX_FROM) -> VectorIndex:
        dim = vectors.shape[1]
        index = build_faiss(vectors, approx_from)
        proto_ids, inverse = np.unique(class_ids, return_inverse=True)
        sums = np.zeros((len(proto_ids), dim), np.float64)
        np.add.at(sums, inverse, vectors)
        return cls(generation, dim, sample_ids, class_ids, index, proto_ids, sums,
                   trained_size=len(vectors))

    @property
    def kind(self) -> str:
        return index_kind(self.index)

    def needs_rebuild(self, approx_from: int = APPROX_FROM) -> bool:
        """True when growth calls for another structure: exact past ``approx_from``, or an
        IVF trained on a gallery REBUILD_GROWTH times smaller."""
        if self.kind == "exact":
            return self.size >= approx_from
        return self.size > REBUILD_GROWTH * max(1, self.trained_size)

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
                np.savez(fh, generation=self.generation, trained_size=self.trained_size,
                         sample_ids=self.sample_ids,
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
                             z["proto_ids"], z["sums"],
                             trained_size=int(z["trained_size"]) if "trained_size" in z
                             else len(z["sample_ids"]))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("index cache %s is unreadable (%s); rebuilding it", path, exc)
            return None
        if cached.index.d != dim or cached.index.ntotal != len(cached.sample_ids):
            return None
        return cached
