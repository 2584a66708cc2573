"""A gallery of enrolled classes: enrollment without training, open-set recognition.

A gallery is a directory holding ``gallery.sqlite`` (the truth, see gallery_store) and
``index.npz`` (a derived FAISS cache, see gallery_cache). It is tied to one model by its
fingerprint.

Threads: one Gallery may be shared, e.g. a worker enrolling while a loop recognises.
Images are decoded and embedded outside ``store.lock``; each transaction and every change
to the in-memory index happen under it, and queries hold it while they read the index.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tledge.errors import GalleryError, ImageError, TledgeError
from tledge.runtime.augment import check_augment
from tledge.runtime.embedder import Embedder
from tledge.runtime.gallery_cache import CacheKey, load_cache, save_cache
from tledge.runtime.gallery_enroll import prepare
from tledge.runtime.gallery_index import APPROX_FROM, VectorIndex
from tledge.runtime.gallery_store import Change, ClassInfo, GalleryStore
from tledge.runtime.labels import MAX_LABEL_LEN, validate_label

log = logging.getLogger(__name__)

DB_NAME = "gallery.sqlite"
CACHE_NAME = "index.npz"
MODES = ("prototype", "nearest")
__all__ = ["CACHE_NAME", "DB_NAME", "MAX_LABEL_LEN", "MODES", "EnrollResult", "Gallery",
           "Match", "ModelChangedError", "validate_label"]


class ModelChangedError(GalleryError):
    """The gallery was re-embedded for another model (by another process) while this one
    held it open; ``fingerprint`` is the gallery's new model fingerprint."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        super().__init__(f"gallery {path} was re-embedded for another model (fingerprint "
                         f"{fingerprint[:12]}) while open; reopen it with that model")
        self.fingerprint = fingerprint


@dataclass(frozen=True)
class Match:
    """One search hit: the ``label`` of a stored sample, its cosine ``score`` to the query
    and the ``sample_id`` it came from."""

    label: str
    score: float
    sample_id: int


@dataclass
class EnrollResult:
    """What one ``enroll`` call stored: ``added`` samples (their ``sample_ids``), images that
    could not be read (``failed``: (name, reason)) and ``duplicates`` skipped because the
    class already held the same picture."""

    label: str
    added: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    duplicates: int = 0
    sample_ids: list[int] = field(default_factory=list)


def _model_meta(embedder: Embedder) -> dict[str, str]:
    """The gallery's record of the model its embeddings come from."""
    info = embedder.info
    model = {"backbone": info.backbone, "precision": info.precision,
             "path": str(embedder.path), "created": info.created}
    return {"fingerprint": info.fingerprint, "dim": str(info.embedding_dim),
            "model": json.dumps(model)}


class Gallery:
    """Use ``Gallery.create`` or ``Gallery.open``; close it (or use ``with``) when done."""

    def __init__(self, path: Path, embedder: Embedder | None, store: GalleryStore) -> None:
        self.path, self.embedder, self.store = path, embedder, store
        self._index: VectorIndex | None = None
        self._labels: dict[int, str] = {}
        self._dirty = False
        self._damaged: dict[int, str] = {}  # samples left out of search (see _rebuild)
        self.mode = "prototype"

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path, embedder: Embedder, threshold: float | None = None,
               augment: str = "none", augment_queries: bool = False) -> Gallery:
        """A new, empty gallery at ``path`` bound to ``embedder``'s model.

        ``augment``: the views each shot's embedding averages (``tledge.runtime.augment``);
        ``augment_queries``: queries embedded through ``embed_queries`` get the same views.
        """
        path = Path(path)
        try:
            check_augment(augment)
        except TledgeError as exc:
            raise GalleryError(str(exc)) from None
        if (path / DB_NAME).exists():
            raise GalleryError(f"a gallery already exists at {path}; open it instead")
        if path.exists() and not path.is_dir():
            raise GalleryError(f"{path} exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        store = GalleryStore(path / DB_NAME)
        thr = embedder.info.threshold if threshold is None else threshold
        try:
            store.initialise({**_model_meta(embedder), "threshold": str(thr),
                              "created": str(time.time()), "augment": augment,
                              "augment_queries": str(int(bool(augment_queries)))})
        except GalleryError:
            store.close()
            raise
        return cls(path, embedder, store)

    @classmethod
    def open(cls, path, embedder: Embedder | None = None, read_only: bool = False) -> Gallery:
        """Open an existing gallery; without an embedder only listing and editing work.

        ``read_only``: never write (also chosen automatically when the OS refuses writes);
        listing and recognition work, changes raise GalleryError.
        """
        path = Path(path)
        _check_db_file(path / DB_NAME)
        if not (path / DB_NAME).is_file():
            raise GalleryError(
                f"no gallery at {path} (missing {DB_NAME}); create one by enrolling: "
                f"`tledge enroll --model M --gallery {path} --label NAME IMAGE...`"
            )
        store = GalleryStore(path / DB_NAME, read_only=read_only)
        try:
            meta = store.meta()
            if "fingerprint" not in meta:
                raise GalleryError(f"{path / DB_NAME} is not a tledge gallery")
            _check_model(path, meta, embedder)
            store.upgrade()
        except GalleryError:
            store.close()
            raise
        return cls(path, embedder, store)

    @classmethod
    def open_or_create(cls, path, embedder: Embedder, augment: str | None = None,
                       augment_queries: bool | None = None) -> Gallery:
        """Open the gallery at ``path`` if it exists, else create it for ``embedder``'s model.
        ``augment``/``augment_queries``: the views of a new gallery (see ``create``); given for
        an existing gallery they must be what it was created with (nothing is changed)."""
        if (Path(path) / DB_NAME).is_file():
            gallery = cls.open(path, embedder)
            made = {"augment": gallery.augment, "augment_queries": gallery.augment_queries}
            asked = {"augment": augment, "augment_queries": augment_queries}
            differ = [f"{k} {made[k]!r}" for k, v in asked.items()
                      if v is not None and v != made[k]]
            if differ:
                gallery.close()
                raise GalleryError(f"gallery {path} was created with {', '.join(differ)}; a "
                                   "gallery's views are set when it is created (its shots "
                                   "were embedded with them): use a new gallery")
            return gallery
        return cls.create(path, embedder, augment=augment or "none",
                          augment_queries=bool(augment_queries))

    @property
    def read_only(self) -> bool:
        """True when opened read-only (or the database is on a read-only mount): queries
        work, changes raise ``GalleryError``."""
        return self.store.read_only

    def close(self) -> None:
        """Save the index cache if it changed and close the database (also on ``with`` exit)."""
        with self.store.lock:
            try:
                if self._dirty and self._index is not None and not self.read_only:
                    self._save_cache(self._index)
            except GalleryError as exc:
                log.warning("index cache for %s not saved (%s)", self.path, exc)
            finally:
                self._dirty = False
                self.store.close()

    def _save_cache(self, index: VectorIndex) -> None:
        """Write the cache if ``index`` is still what the database holds."""
        snap = self.store.snapshot(self.dim)
        if snap.state == index.state:
            save_cache(self.path / CACHE_NAME, index, CacheKey(snap.gallery_id, snap.content))

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- settings --------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Embedding length of the model the gallery was made with."""
        return int(self.store.meta()["dim"])

    @property
    def threshold(self) -> float:
        """Open-set cosine threshold: a best score below it is answered "unknown". Setting it
        (a finite cosine in [-1, 1]) is stored in the gallery at once."""
        return float(self.store.meta()["threshold"])

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not -1.0 <= float(value) <= 1.0:  # also refuses NaN
            raise GalleryError(f"threshold {value} must be a cosine similarity in [-1, 1]")
        with self.store.lock:
            self._advance(self.store.set_meta("threshold", str(float(value))))

    @property
    def approx_from(self) -> int:
        """Samples from which nearest-sample search uses an approximate (IVF) index."""
        return int(self.store.meta().get("approx_from", APPROX_FROM))

    @approx_from.setter
    def approx_from(self, value: int) -> None:
        if int(value) < 1:
            raise GalleryError(f"approx_from must be a positive sample count, got {value}")
        with self.store.lock:
            self.store.set_meta("approx_from", str(int(value)))
            self._index = None  # the next query rebuilds with the new policy

    @property
    def augment(self) -> str:
        """The views every stored embedding averages ("none" for galleries made before the
        setting existed). Changed only by ``reembed``, which re-embeds every shot with it."""
        return self.store.meta().get("augment", "none")

    @property
    def augment_queries(self) -> bool:
        """Whether ``embed_queries`` gives queries the same views as the shots."""
        return self.store.meta().get("augment_queries", "0") == "1"

    @augment_queries.setter
    def augment_queries(self, value: bool) -> None:
        with self.store.lock:  # the stored vectors do not change: the index stays valid
            self._advance(self.store.set_meta("augment_queries", str(int(bool(value)))))

    def info(self) -> dict:
        """A JSON-ready summary: path, model fingerprint and metadata, ``dim``, ``threshold``,
        class and sample counts, generation, index and augmentation settings."""
        meta = self.store.meta()
        classes = self.classes()
        return {"path": str(self.path), "fingerprint": meta["fingerprint"],
                "model": json.loads(meta.get("model", "{}")), "dim": int(meta["dim"]),
                "threshold": float(meta["threshold"]), "classes": len(classes),
                "samples": sum(c.samples for c in classes), "generation": int(meta["generation"]),
                "approx_from": self.approx_from, "read_only": self.read_only,
                "augment": meta.get("augment", "none"),
                "augment_queries": meta.get("augment_queries", "0") == "1",
                "damaged_samples": sorted(self._damaged)}

    # -- changes ---------------------------------------------------------------------------
    def enroll(self, label: str, images: Sequence, skip_bad: bool = False,
               progress: Callable[[int], None] | None = None,
               allow_duplicates: bool = False) -> EnrollResult:
        """Embed ``images`` (paths or RGB uint8 arrays) and add them to ``label`` in one
        transaction (all of this call's samples, or none).

        A picture already in the class (same decoded pixels) is skipped and counted in
        ``duplicates`` unless ``allow_duplicates``: re-running an enrollment adds nothing.
        With ``skip_bad`` unreadable images are listed in ``failed`` and the rest enrolled
        (even none); otherwise the first bad image raises ImageError and nothing is written.
        """
        label = validate_label(label)
        embedder = self._need_embedder("enroll")
        self.store.check_writable()
        known = set() if allow_duplicates else self.store.content_digests(label)
        prep = prepare(embedder, images, known, skip_bad, allow_duplicates, progress,
                       augment=self.augment)
        result = EnrollResult(label, 0, prep.failed, prep.duplicates)
        if not prep.sources:
            if not prep.failed and not prep.duplicates:
                raise ImageError(f"no images given to enroll for {label!r}")
            return result
        vectors = prep.embeddings(embedder.dim)
        with self.store.lock:
            change, class_id, ids, kept = self.store.add_samples(
                label, vectors, prep.crops, prep.sources, prep.digests,
                dedupe=not allow_duplicates, fingerprint=embedder.fingerprint)
            self._after_add(change, np.array(ids, np.int64), class_id, vectors[kept], label)
        result.added, result.sample_ids = len(ids), list(ids)
        result.duplicates += len(vectors) - len(ids)  # stored meanwhile by another writer
        return result

    def enroll_vectors(self, label: str, vectors: np.ndarray,
                       crops: Sequence[bytes | None] | None = None,
                       sources: Sequence[str] | None = None) -> int:
        """Add already-embedded samples (n, dim) of this gallery's model to ``label``.

        Without crops the samples cannot be re-embedded for another model later. Vectors are
        never deduplicated. They must have been embedded with the gallery's ``augment``
        views (``embedder.embed(images, augment=gallery.augment)``).
        """
        label = validate_label(label)
        vectors = np.asarray(vectors, np.float32)
        dim = self.dim
        if vectors.ndim != 2 or vectors.shape[1] != dim or not len(vectors):
            raise GalleryError(f"expected embeddings of shape (n, {dim}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise GalleryError("embeddings contain NaN or infinite values")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not (norms > 0).all():
            raise GalleryError("embeddings contain all-zero vectors")
        vectors = (vectors / norms).astype(np.float32)  # search is cosine over unit vectors
        n = len(vectors)
        crops = list(crops) if crops is not None else [None] * n
        sources = list(sources) if sources is not None else [""] * n
        with self.store.lock:
            change, class_id, ids, _ = self.store.add_samples(
                label, vectors, crops, sources,
                fingerprint=self.embedder.fingerprint if self.embedder else None)
            self._after_add(change, np.array(ids, np.int64), class_id, vectors, label)
        return len(ids)

    def _after_add(self, change: Change, ids: np.ndarray, class_id: int, vectors: np.ndarray,
                   label: str) -> None:
        """Grow the in-memory index if it was current before ``change`` (caller holds the
        lock), else drop it: someone else wrote too, so reload on next use."""
        index = self._index
        if index is None or index.state != change.before:
            self._index = None
            return
        if len(ids):
            index.add(change.after, ids, class_id, vectors)
            self._labels[class_id] = label
            self._dirty = True
        index.state = change.after
        if index.needs_rebuild(self.approx_from):
            self._index = None  # grown past its structure: rebuilt on the next query

    def _advance(self, change: Change) -> None:
        """After a change that left every vector as it was (caller holds the lock)."""
        if self._index is not None and self._index.state == change.before:
            self._index.state = change.after
        else:
            self._index = None

    def _existing(self, label: str) -> str:
        """The stored label ``label`` names: as given (a label stored before validation had
        today's rules stays reachable) or in NFC; GalleryError with a hint if none."""
        labels = set(self.labels())
        for candidate in (label, unicodedata.normalize("NFC", str(label))):
            if candidate in labels:
                return candidate
        raise GalleryError(f"no class named {label!r} in the gallery" + self._hint(label))

    def remove(self, label: str) -> None:
        """Delete the class ``label`` and all its samples in one transaction."""
        label = self._existing(label)
        with self.store.lock:
            change, removed = self.store.remove(label)
            if removed:
                self._index = None
            else:
                self._advance(change)
        if not removed:  # removed meanwhile by another writer
            raise GalleryError(f"no class named {label!r} in the gallery")

    def rename(self, old: str, new: str) -> None:
        """Rename class ``old`` to ``new`` (a visible, NFC-normalised label)."""
        new = validate_label(new)
        old = self._existing(old)
        with self.store.lock:
            change, labels = self.store.rename(old, new)
            self._advance(change)
            self._labels = labels

    def reembed(self, embedder: Embedder, progress: Callable[[int], None] | None = None,
                augment: str | None = None) -> int:
        """Re-embed every stored crop with ``embedder`` and bind the gallery to it; with
        ``augment`` the gallery's views change to those in the same transaction."""
        from tledge.runtime.images import decode_image

        try:
            augment = check_augment(self.augment if augment is None else augment)
        except TledgeError as exc:
            raise GalleryError(str(exc)) from None
        self.store.check_writable()
        ids = self.store.sample_ids()
        parts = []
        for start in range(0, len(ids), embedder.batch_size):  # a batch of crops at a time
            rows = self.store.crops(ids=ids[start:start + embedder.batch_size])
            missing = [sid for sid, _, crop in rows if crop is None]
            if missing or len(rows) != len(ids[start:start + embedder.batch_size]):
                raise GalleryError(f"samples {missing[:5]} have no stored crop; cannot re-embed"
                                   if missing else "the gallery changed while re-embedding")
            parts.append(embedder.embed([decode_image(c, f"sample {s}") for s, _, c in rows],
                                        progress=progress, augment=augment))
        vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
        with self.store.lock:
            self.store.replace_embeddings(ids, vectors,
                                          {**_model_meta(embedder), "augment": augment})
            self.embedder, self._index = embedder, None
        return len(ids)

    # -- queries ---------------------------------------------------------------------------
    def labels(self) -> list[str]:
        """The class labels, sorted."""
        return [c.label for c in self.store.classes()]

    def classes(self) -> list[ClassInfo]:
        """Every class (sorted by label) with its sample count and its created and updated
        times (seconds since the epoch)."""
        return self.store.classes()

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """(label per sample, embeddings (n, dim)) from the database, the source of truth."""
        snap = self.store.snapshot(self.dim, vectors=True)
        return [snap.labels[int(c)] for c in snap.class_ids], snap.vectors

    def crops(self, label: str) -> list[bytes]:
        """The stored enrollment crops of class ``label`` (JPEG bytes), oldest first."""
        return [crop for _, _, crop in self.store.crops(label) if crop is not None]

    def _current(self) -> VectorIndex:
        """The index for the store's current state: in memory, the cache file (verified
        against the database's content), or rebuilt from the database. ModelChangedError
        if another process re-embedded the gallery for a model other than ours."""
        with self.store.lock:
            if self._index is not None and self._index.state == self.store.state():
                return self._index
            fingerprint = self.store.meta()["fingerprint"]
            if self.embedder is not None and fingerprint != self.embedder.fingerprint:
                self._index = None
                raise ModelChangedError(self.path, fingerprint)
            dim, cache = self.dim, self.path / CACHE_NAME
            cached = snap = None
            if cache.is_file():
                snap = self.store.snapshot(dim)
                cached = load_cache(cache, CacheKey(snap.gallery_id, snap.content),
                                    snap.sample_ids, snap.class_ids, dim)
            if cached is None or snap is None:
                snap = self.store.snapshot(dim, vectors=True)
                cached = self._rebuild(snap)
            cached.state = snap.state
            self._index, self._labels = cached, snap.labels
            return cached

    def _rebuild(self, snap) -> VectorIndex:
        """An index over ``snap``'s trustworthy vectors; damaged ones are left out, named
        once in a warning and listed in ``info()["damaged_samples"]``."""
        bad = snap.damaged
        keep = np.array([int(i) not in bad for i in snap.sample_ids], bool)
        if bad and bad != self._damaged:
            shown = ", ".join(f"{i} ({why})" for i, why in sorted(bad.items())[:10])
            log.warning("gallery %s: %d damaged sample embedding(s) left out of search: %s; "
                        "remove and re-enroll their classes (`tledge gallery remove`) or "
                        "re-embed the gallery (`tledge gallery reembed`)", self.path,
                        len(bad), shown)
        self._damaged = dict(bad)
        index = VectorIndex.build(snap.state, snap.sample_ids[keep], snap.class_ids[keep],
                                  snap.vectors[keep], self.approx_from)
        self._dirty = not bad  # a partial index must not be cached as the database's
        return index

    def embed_queries(self, images: Sequence, fast_resize: bool = False) -> np.ndarray:
        """Query embeddings (n, dim) for paths or RGB arrays: with ``augment_queries`` the
        same views as the shots (``augment``), else the picture alone."""
        augment = self.augment if self.augment_queries else "none"
        return self._need_embedder("embed queries").embed(images, fast_resize=fast_resize,
                                                          augment=augment)

    def classify(self, embedding: np.ndarray) -> tuple[str | None, float]:
        """(label, cosine score) for one (dim,) embedding; label None below the threshold."""
        return self.classify_batch(np.asarray(embedding)[None, :])[0]

    def classify_batch(self, embeddings: np.ndarray, mode: str | None = None,
                       threshold: float | None = None) -> list[tuple[str | None, float]]:
        """Open-set decision per row of (n, dim) by class prototype or nearest sample."""
        mode = mode or self.mode
        if mode not in MODES:
            raise GalleryError(f"unknown matching mode {mode!r}; choose one of {MODES}")
        thr = self.threshold if threshold is None else threshold
        best = self.best_matches(embeddings, mode)
        return [(lab if score >= thr else None, score) for lab, score in best]

    def best_matches(self, embeddings: np.ndarray,
                     mode: str = "prototype") -> list[tuple[str | None, float]]:
        """Closest class and its score per row, before any threshold."""
        with self.store.lock:
            index = self._current()
            if index.size == 0:
                return [(None, -1.0)] * len(embeddings)
            if mode == "nearest":
                scores, pos = index.search(embeddings, 1)
                return [(self._labels[int(index.class_ids[p])], float(s))
                        for s, p in zip(scores[:, 0], pos[:, 0])]
            sims = np.asarray(embeddings, np.float32) @ index.prototypes().T
            top = sims.argmax(axis=1)
            return [(self._labels[int(index.proto_ids[t])], float(sims[i, t]))
                    for i, t in enumerate(top)]

    def search(self, embeddings: np.ndarray, k: int = 5) -> list[list[Match]]:
        """The k nearest enrolled samples per row of (n, dim), best first."""
        with self.store.lock:
            index = self._current()
            scores, pos = index.search(np.asarray(embeddings, np.float32), k)
            return [[Match(self._labels[int(index.class_ids[p])], float(s),
                           int(index.sample_ids[p])) for s, p in zip(srow, prow) if p >= 0]
                    for srow, prow in zip(scores, pos)]

    def _need_embedder(self, action: str) -> Embedder:
        if self.embedder is None:
            raise GalleryError(f"to {action}, open the gallery with its model (--model)")
        return self.embedder

    def _hint(self, label: str) -> str:
        import difflib

        close = difflib.get_close_matches(label, self.labels(), n=1)
        return f"; did you mean {close[0]!r}?" if close else ""


def _check_db_file(db: Path) -> None:
    """Clear errors for a database path that is a folder or an empty file."""
    if db.is_dir():
        raise GalleryError(f"{db} is a folder, not a gallery database file; move it away or "
                           f"restore the gallery (`tledge gallery restore --gallery "
                           f"{db.parent} BACKUP`)")
    wal = db.with_name(db.name + "-wal")
    if db.is_file() and db.stat().st_size == 0 and not (wal.is_file() and wal.stat().st_size):
        raise GalleryError(f"{db} is empty (damaged: 0 bytes); restore it from a backup with "
                           f"`tledge gallery restore --gallery {db.parent} BACKUP`")


def _check_model(path: Path, meta: dict[str, str], embedder: Embedder | None) -> None:
    """Refuse a model other than the one the gallery's embeddings come from."""
    if embedder is None or meta["fingerprint"] == embedder.fingerprint:
        return
    made_by = json.loads(meta.get("model", "{}"))
    raise GalleryError(
        f"gallery {path} was built with another model ({made_by.get('backbone', '?')}, "
        f"fingerprint {meta['fingerprint'][:12]}) than {embedder.path.name} "
        f"(fingerprint {embedder.fingerprint[:12]}); its embeddings are not comparable. "
        f"Use the original model, or re-embed the stored crops with "
        f"`tledge gallery reembed --model {embedder.path} --gallery {path}`"
    )
