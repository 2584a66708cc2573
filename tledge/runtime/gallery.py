"""A gallery of enrolled classes: enrollment without training, open-set recognition.

A gallery is a directory holding ``gallery.sqlite`` (the truth, see gallery_store) and
``index.npz`` (a derived FAISS cache). It is tied to one model by its fingerprint.
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

from tledge.errors import GalleryError, ImageError
from tledge.runtime.embedder import Embedder
from tledge.runtime.gallery_index import APPROX_FROM, VectorIndex
from tledge.runtime.gallery_store import ClassInfo, GalleryStore
from tledge.runtime.images import check_rgb, encode_jpeg, load_image

log = logging.getLogger(__name__)

DB_NAME = "gallery.sqlite"
CACHE_NAME = "index.npz"
MODES = ("prototype", "nearest")
MAX_LABEL_LEN = 200


@dataclass(frozen=True)
class Match:
    label: str
    score: float
    sample_id: int


@dataclass
class EnrollResult:
    label: str
    added: int
    failed: list[tuple[str, str]] = field(default_factory=list)


def validate_label(label: str) -> str:
    """Labels are data: any Unicode text, but not empty, not padded, no control characters."""
    if not isinstance(label, str) or not label.strip():
        raise GalleryError("a label must be a non-empty text")
    if label != label.strip():
        raise GalleryError(f"label {label!r} has leading or trailing spaces; remove them")
    if len(label) > MAX_LABEL_LEN:
        raise GalleryError(f"label is {len(label)} characters long; the limit is {MAX_LABEL_LEN}")
    if any(unicodedata.category(ch) == "Cc" for ch in label):
        raise GalleryError(f"label {label!r} contains control characters")
    return label


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
        self.mode = "prototype"

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path, embedder: Embedder, threshold: float | None = None) -> Gallery:
        path = Path(path)
        if (path / DB_NAME).exists():
            raise GalleryError(f"a gallery already exists at {path}; open it instead")
        if path.exists() and not path.is_dir():
            raise GalleryError(f"{path} exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        store = GalleryStore(path / DB_NAME)
        thr = embedder.info.threshold if threshold is None else threshold
        store.initialise({**_model_meta(embedder), "threshold": str(thr),
                          "created": str(time.time())})
        return cls(path, embedder, store)

    @classmethod
    def open(cls, path, embedder: Embedder | None = None) -> Gallery:
        """Open an existing gallery; without an embedder only listing and editing work."""
        path = Path(path)
        if not (path / DB_NAME).is_file():
            raise GalleryError(
                f"no gallery at {path} (missing {DB_NAME}); create one by enrolling: "
                f"`tledge enroll --model M --gallery {path} --label NAME IMAGE...`"
            )
        store = GalleryStore(path / DB_NAME)
        meta = store.meta()
        if "fingerprint" not in meta:
            store.close()
            raise GalleryError(f"{path / DB_NAME} is not a tledge gallery")
        gallery = cls(path, embedder, store)
        if embedder is not None and meta["fingerprint"] != embedder.fingerprint:
            store.close()
            made_by = json.loads(meta.get("model", "{}"))
            raise GalleryError(
                f"gallery {path} was built with another model ({made_by.get('backbone', '?')}, "
                f"fingerprint {meta['fingerprint'][:12]}) than {embedder.path.name} "
                f"(fingerprint {embedder.fingerprint[:12]}); its embeddings are not comparable. "
                f"Use the original model, or re-embed the stored crops with "
                f"`tledge gallery reembed --model {embedder.path} --gallery {path}`"
            )
        return gallery

    @classmethod
    def open_or_create(cls, path, embedder: Embedder) -> Gallery:
        if (Path(path) / DB_NAME).is_file():
            return cls.open(path, embedder)
        return cls.create(path, embedder)

    def close(self) -> None:
        if self._dirty and self._index is not None:
            self._index.save(self.path / CACHE_NAME)
            self._dirty = False
        self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- settings --------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return float(self.store.meta()["threshold"])

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not -1.0 <= float(value) <= 1.0:
            raise GalleryError(f"threshold {value} must be a cosine similarity in [-1, 1]")
        self.store.set_meta("threshold", str(float(value)))

    @property
    def approx_from(self) -> int:
        """Samples from which nearest-sample search uses an approximate (IVF) index."""
        return int(self.store.meta().get("approx_from", APPROX_FROM))

    @approx_from.setter
    def approx_from(self, value: int) -> None:
        if int(value) < 1:
            raise GalleryError(f"approx_from must be a positive sample count, got {value}")
        self.store.set_meta("approx_from", str(int(value)))
        self._index = None  # the next query rebuilds with the new policy

    def info(self) -> dict:
        meta = self.store.meta()
        classes = self.classes()
        return {"path": str(self.path), "fingerprint": meta["fingerprint"],
                "model": json.loads(meta.get("model", "{}")), "dim": int(meta["dim"]),
                "threshold": float(meta["threshold"]), "classes": len(classes),
                "samples": sum(c.samples for c in classes), "generation": int(meta["generation"]),
                "approx_from": self.approx_from}

    # -- changes ---------------------------------------------------------------------------
    def enroll(self, label: str, images: Sequence, skip_bad: bool = False,
               progress: Callable[[int], None] | None = None) -> EnrollResult:
        """Embed ``images`` (paths or RGB arrays) and add them to ``label`` in one transaction.

        With ``skip_bad`` unreadable images are reported in ``failed`` and the rest enrolled;
        otherwise the first bad image raises ImageError and nothing is written.
        """
        validate_label(label)
        embedder = self._need_embedder("enroll")
        result = EnrollResult(label, 0)
        rgb, sources = [], []
        for i, item in enumerate(images):
            name = str(item) if not isinstance(item, np.ndarray) else f"frame #{i}"
            try:
                is_array = isinstance(item, np.ndarray)
                rgb.append(check_rgb(item, name) if is_array else load_image(item))
                sources.append(name)
            except ImageError as exc:
                if not skip_bad:
                    raise
                result.failed.append((name, str(exc)))
        if not rgb:
            raise ImageError(f"no readable images to enroll for {label!r}")
        vectors = embedder.embed(rgb, progress=progress)
        result.added = self.enroll_vectors(label, vectors, [encode_jpeg(im) for im in rgb], sources)
        return result

    def enroll_vectors(self, label: str, vectors: np.ndarray,
                       crops: Sequence[bytes | None] | None = None,
                       sources: Sequence[str] | None = None) -> int:
        """Add already-embedded samples (n, dim) of this gallery's model to ``label``.

        Without crops the samples cannot be re-embedded for another model later.
        """
        validate_label(label)
        vectors = np.asarray(vectors, np.float32)
        dim = int(self.store.meta()["dim"])
        if vectors.ndim != 2 or vectors.shape[1] != dim or not len(vectors):
            raise GalleryError(f"expected embeddings of shape (n, {dim}), got {vectors.shape}")
        n = len(vectors)
        crops = list(crops) if crops is not None else [None] * n
        sources = list(sources) if sources is not None else [""] * n
        before = self.store.generation()
        class_id, ids = self.store.add_samples(label, vectors, crops, sources)
        self._after_add(before, np.array(ids, np.int64), class_id, vectors, label)
        return len(ids)

    def _after_add(self, before: int, ids: np.ndarray, class_id: int, vectors: np.ndarray,
                   label: str) -> None:
        index = self._index
        if index is not None and index.generation == before:
            index.add(before + 1, ids, class_id, vectors)
            self._labels[class_id] = label
            self._dirty = True
            if index.needs_rebuild(self.approx_from):
                self._index = None  # grown past its structure: rebuilt on the next query
        else:
            self._index = None  # someone else wrote too: reload on next use

    def remove(self, label: str) -> None:
        if self.store.remove(label) == 0:
            raise GalleryError(f"no class named {label!r} in the gallery" + self._hint(label))
        self._index = None

    def rename(self, old: str, new: str) -> None:
        validate_label(new)
        if old not in self.labels():
            raise GalleryError(f"no class named {old!r} in the gallery" + self._hint(old))
        before = self.store.generation()
        self.store.rename(old, new)
        if self._index is not None and self._index.generation == before:
            self._index.generation = self.store.generation()  # vectors unchanged: no rebuild
            self._labels = self.store.class_labels()
            self._dirty = True
        else:
            self._index = None

    def reembed(self, embedder: Embedder, progress: Callable[[int], None] | None = None) -> int:
        """Re-embed every stored crop with ``embedder`` and bind the gallery to it."""
        rows = self.store.crops()
        missing = [sid for sid, _, crop in rows if crop is None]
        if missing:
            raise GalleryError(f"{len(missing)} samples have no stored crop; cannot re-embed")
        from tledge.runtime.images import decode_image

        images = [decode_image(crop, f"sample {sid}") for sid, _, crop in rows]
        vectors = embedder.embed(images, progress=progress)
        self.store.replace_embeddings([r[0] for r in rows], vectors, _model_meta(embedder))
        self.embedder, self._index = embedder, None
        return len(rows)

    # -- queries ---------------------------------------------------------------------------
    def labels(self) -> list[str]:
        return [c.label for c in self.store.classes()]

    def classes(self) -> list[ClassInfo]:
        return self.store.classes()

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """(label per sample, embeddings (n, dim)) from the database, the source of truth."""
        _, _, class_ids, vecs = self.store.load_vectors(int(self.store.meta()["dim"]))
        names = self.store.class_labels()
        return [names[int(c)] for c in class_ids], vecs

    def crops(self, label: str) -> list[bytes]:
        return [crop for _, _, crop in self.store.crops(label) if crop is not None]

    def _current(self) -> VectorIndex:
        """The index for the store's current generation: in memory, cached file, or rebuilt."""
        gen = self.store.generation()
        if self._index is not None and self._index.generation == gen:
            return self._index
        dim = int(self.store.meta()["dim"])
        cached = VectorIndex.load(self.path / CACHE_NAME, gen, dim)
        if cached is None:
            gen, ids, cls, vecs = self.store.load_vectors(dim)
            cached = VectorIndex.build(gen, ids, cls, vecs, self.approx_from)
            self._dirty = True
        self._index, self._labels = cached, self.store.class_labels()
        return cached

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
