"""The gallery's derived search structures: a FAISS index over samples and class prototypes.

Never the only copy of anything: built from the SQLite store, cached in ``index.npz`` next
to it (see ``gallery_cache``: checked against the store's content) and rebuilt when stale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


# Exact search below this many samples (~15 ms per query at 20k x 1280-d on 2 cores); an
# inverted-file index with 8-bit scalar-quantised vectors (IVF-SQ8) beyond it: a quarter of
# the memory and about twice as fast per scanned vector as float storage, for a recall loss
# the nprobe tuning makes up. Class prototypes are always exact (one row per class).
APPROX_FROM = 20_000
IVF_TRAIN_PER_LIST = 40           # k-means training points per list (FAISS wants >= 39)
# Vectors scanned per query. At 1M vectors (2048 lists, real MobileNetV2 embeddings as seeds
# and queries) nprobe 8 / 16 / 24 gave recall@1 0.917 / 0.953 / 0.970 in one draw of queries
# and 0.93 / 0.99 / 1.00 in another, in 1.8 / 2.5 / 3.5 ms p50 on 2 cores when quiet (a
# single query searches its lists in parallel); `tledge bench --gallery` with this budget
# (nprobe 17): recall 0.993, 3.9 ms p50. 4096 lists did worse at equal nprobe (0.947 at 24).
SCAN_BUDGET = 8192
KMEANS_ITERATIONS = 10            # enough for list assignment; FAISS's 25 costs 2.5x the time
REBUILD_GROWTH = 4.0              # re-train the IVF once the gallery has grown this much


def _faiss():
    import faiss

    return faiss


def ivf_lists(n: int) -> int:
    """Inverted lists for ``n`` vectors: ~2 sqrt(n), a power of two, 64..8192."""
    return int(min(8192, max(64, 2 ** round(np.log2(2 * np.sqrt(max(n, 1)))))))


def scan_nprobe(n: int, nlist: int) -> int:
    """Lists visited per query so that about SCAN_BUDGET vectors are scanned (8 at least)."""
    return int(np.clip(round(SCAN_BUDGET * nlist / max(n, 1)), 8, nlist))


def build_faiss(vectors: np.ndarray, approx_from: int = APPROX_FROM, seed: int = 0):
    """An exact ``IndexFlatIP`` for small ``vectors`` (n, dim), else a trained IVF-SQ8 index
    (inner product) holding them, visiting ``scan_nprobe`` lists per query."""
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
        index.nprobe = scan_nprobe(n, index.nlist)
        log.info("IVF-SQ8 index: %d vectors, %d lists, nprobe %d", n, index.nlist, index.nprobe)
    return index


def search_faiss(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search``, with an IVF's threads spread over its lists for a few queries: FAISS
    parallelises over queries by default, so one live query would use one core (1.4-1.6x
    slower on 2 cores)."""
    if hasattr(index, "parallel_mode"):
        index.parallel_mode = 1 if len(queries) < 4 else 0
    return index.search(np.ascontiguousarray(queries, np.float32), k)


def index_kind(index) -> str:
    return "exact" if index.__class__.__name__ == "IndexFlatIP" else (
        f"ivf-sq8(nlist={index.nlist}, nprobe={index.nprobe})")


@dataclass
class VectorIndex:
    """Inner-product search over L2-normalised sample embeddings: exact while small, an IVF
    index beyond ``APPROX_FROM`` samples (see ``build_faiss``).

    ``sample_ids``/``class_ids``: (n,) int64 aligned with the FAISS rows. Prototypes are the
    re-normalised per-class sums ``sums`` (c, dim) for ``proto_ids`` (c,). ``state``: the
    store state the index reflects (the gallery's (generation, change token)).
    """

    state: object
    dim: int
    sample_ids: np.ndarray
    class_ids: np.ndarray
    index: object
    proto_ids: np.ndarray
    sums: np.ndarray
    trained_size: int = 0     # samples when the index structure was chosen and trained
    _protos: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(cls, state: object, sample_ids: np.ndarray, class_ids: np.ndarray,
              vectors: np.ndarray, approx_from: int = APPROX_FROM) -> VectorIndex:
        dim = vectors.shape[1]
        index = build_faiss(vectors, approx_from)
        proto_ids, inverse = np.unique(class_ids, return_inverse=True)
        sums = np.zeros((len(proto_ids), dim), np.float64)
        np.add.at(sums, inverse, vectors)
        return cls(state, dim, sample_ids, class_ids, index, proto_ids, sums,
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

    def add(self, state: object, sample_ids: np.ndarray, class_id: int,
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
        self.state = state
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
        return search_faiss(self.index, queries, k)
