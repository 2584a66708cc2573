"""Turning enrollment images into samples, one full-resolution image in memory at a time.

Each image is decoded, digested, cut into a small JPEG crop and preprocessed into the
model's input tensor, then dropped; tensors are embedded in batches of the embedder's size.
Nothing here touches the database, so it runs outside the gallery's lock.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from tledge.errors import ImageError
from tledge.runtime.augment import pool_views, view_count, view_tensors
from tledge.runtime.embedder import Embedder
from tledge.runtime.images import check_rgb, encode_jpeg, load_image


def image_digest(rgb: np.ndarray) -> str:
    """sha256 (hex) over an RGB uint8 (H, W, 3) image's shape and pixel bytes: the same
    picture read from a file, an array or an upload gives the same digest."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    h = hashlib.sha256("x".join(map(str, rgb.shape)).encode() + b":")
    h.update(memoryview(rgb).cast("B"))
    return h.hexdigest()


@dataclass
class Prepared:
    """Samples ready to store: embeddings (n, dim) plus a crop, source and digest each."""

    vectors: list[np.ndarray] = field(default_factory=list)
    crops: list[bytes] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    duplicates: int = 0

    def embeddings(self, dim: int) -> np.ndarray:
        return np.concatenate(self.vectors) if self.vectors else np.zeros((0, dim), np.float32)


def _decode(item, name: str) -> np.ndarray:
    return check_rgb(item, name) if isinstance(item, np.ndarray) else load_image(item)


def prepare(embedder: Embedder, images: Iterable, known: set[str], skip_bad: bool,
            allow_duplicates: bool,
            progress: Callable[[int], None] | None = None,
            augment: str = "none") -> Prepared:
    """Embed ``images`` (paths or RGB arrays), skipping pictures whose digest is in ``known``
    (or repeated within ``images``) unless ``allow_duplicates``. A bad image raises
    ImageError, or with ``skip_bad`` is listed in ``failed``. ``progress(k)`` after each
    k images handled. ``augment``: each picture's embedding averages those views."""
    out, tensors = Prepared(), []
    n_views = view_count(augment)
    seen = set(known)
    for i, item in enumerate(images):
        name = f"frame #{i}" if isinstance(item, np.ndarray) else str(item)
        try:
            rgb = _decode(item, name)
        except ImageError as exc:
            if not skip_bad:
                raise
            out.failed.append((name, str(exc)))
            _tick(progress, 1)
            continue
        digest = image_digest(rgb)
        if not allow_duplicates and digest in seen:
            out.duplicates += 1
            _tick(progress, 1)
            continue
        seen.add(digest)
        tensors += view_tensors(rgb, augment, embedder.info.preprocess)
        out.crops.append(encode_jpeg(rgb))
        out.sources.append(_displayable(name))
        out.digests.append(digest)
        del rgb  # the only full-resolution copy: gone before the next decode
        if len(tensors) >= max(embedder.batch_size, n_views):  # whole pictures per batch
            _embed(embedder, tensors, out, progress, n_views)
    if tensors:
        _embed(embedder, tensors, out, progress, n_views)
    return out


def _embed(embedder: Embedder, tensors: list[np.ndarray], out: Prepared,
           progress: Callable[[int], None] | None, n_views: int = 1) -> None:
    """Embed the pending (3, S, S) tensors (``n_views`` consecutive ones per picture) as one
    batch, one pooled embedding per picture, and clear them."""
    pictures = len(tensors) // n_views
    names = [name for name in out.sources[-pictures:] for _ in range(n_views)]
    out.vectors.append(pool_views(embedder.embed_tensor(np.stack(tensors), names=names),
                                  n_views))
    _tick(progress, len(tensors) // n_views)
    tensors.clear()


def _tick(progress: Callable[[int], None] | None, n: int) -> None:
    if progress:
        progress(n)


def _displayable(name: str) -> str:
    """``name`` as valid UTF-8 text: a file name of undecodable bytes (b'caf\\xe9.jpg', held
    as surrogates) cannot be stored as TEXT, so those bytes become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")
