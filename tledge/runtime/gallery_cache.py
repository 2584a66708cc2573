"""The index cache file (``index.npz``): written durably, trusted only after checks.

A cache is used only when (1) its sha256 over every stored array matches (so a bit-flipped
FAISS blob never reaches ``faiss.deserialize_index``, which can crash in C++), (2) it was
built for this gallery (its random ``gallery_id``) from exactly the samples the database
holds now (the sha256 over (sample id, class id, vector digest) rows, and the same ids), and
(3) its arrays have the shapes and types an index needs. Anything else is discarded; the
caller rebuilds from SQLite. Damage is one warning, a stale cache an info line.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge.runtime.gallery_index import VectorIndex, _faiss

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
FIELDS = ("format", "gallery_id", "content", "trained_size", "sample_ids", "class_ids",
          "proto_ids", "sums", "index")
# What a damaged or foreign file can raise while numpy, zipfile and FAISS read it.
DAMAGE = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
          RuntimeError, SyntaxError, OverflowError, MemoryError, zipfile.BadZipFile,
          zlib.error, struct.error)


@dataclass(frozen=True)
class CacheKey:
    """What a cache is bound to: the gallery's identity and the content digest of its samples."""

    gallery_id: str
    content: str


class StaleCache(Exception):
    """A readable cache built from other content (not damage: no warning)."""


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over each field's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in FIELDS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_cache(path: Path, index: VectorIndex, key: CacheKey) -> bool:
    """Write atomically and durably (temp file, fsync, rename, fsync the folder): a reader
    sees the old cache or the new one, and a power cut never leaves a torn file in place.
    A failure to write (read-only folder, full disk) is logged, not raised."""
    arrays = {"format": np.int64(CACHE_FORMAT), "gallery_id": np.str_(key.gallery_id),
              "content": np.str_(key.content), "trained_size": np.int64(index.trained_size),
              "sample_ids": np.asarray(index.sample_ids, np.int64),
              "class_ids": np.asarray(index.class_ids, np.int64),
              "proto_ids": np.asarray(index.proto_ids, np.int64),
              "sums": np.asarray(index.sums, np.float64),
              "index": np.asarray(_faiss().serialize_index(index.index), np.uint8)}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, checksum=np.str_(_checksum(arrays)), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
        return True
    except OSError as exc:
        log.warning("could not write index cache %s (%s); it will be rebuilt when needed",
                    path, exc)
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; some file systems cannot fsync a folder (ignored)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_cache(path: Path, key: CacheKey, sample_ids: np.ndarray, class_ids: np.ndarray,
               dim: int) -> VectorIndex | None:
    """The cached index if it is intact and built from exactly these samples, else None.

    ``sample_ids``/``class_ids``: (n,) int64, the database's samples in id order.
    """
    if not path.is_file():
        return None
    try:
        _check_sizes(path, len(sample_ids), dim)
        arrays = _read(path)
        _check_shapes(arrays, dim)
        _check_binding(arrays, key, sample_ids, class_ids)
        index = _faiss().deserialize_index(arrays["index"])
        if index.d != dim or index.ntotal != len(sample_ids):
            raise ValueError(f"FAISS index holds {index.ntotal} x {index.d}, "
                             f"expected {len(sample_ids)} x {dim}")
    except StaleCache as exc:
        log.info("index cache %s is stale (%s); rebuilding it", path, exc)
        return None
    except DAMAGE as exc:
        log.warning("index cache %s is damaged (%s: %s); rebuilding it from the database",
                    path, type(exc).__name__, exc)
        return None
    return VectorIndex(None, dim, arrays["sample_ids"], arrays["class_ids"], index,
                       arrays["proto_ids"], arrays["sums"],
                       trained_size=int(arrays["trained_size"]))


def _check_sizes(path: Path, n: int, dim: int) -> None:
    """Refuse members larger than ``n`` samples of ``dim`` floats can need, from the zip
    directory alone: a small file deflating to gigabytes never gets decompressed."""
    extra = 1 << 20
    limits = {"index": 2 * n * dim * 4 + n * 64 + extra, "sums": n * dim * 8 + extra,
              "sample_ids": n * 8 + extra, "class_ids": n * 8 + extra,
              "proto_ids": n * 8 + extra}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            limit = limits.get(info.filename.removesuffix(".npy"), extra)
            if info.file_size > limit:
                raise ValueError(f"member {info.filename} unpacks to {info.file_size} bytes, "
                                 f"more than {n} samples need")


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every field, checksum verified before anything is interpreted."""
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("not an npz archive")
    with contextlib.closing(loaded) as z:
        if set(z.files) != {*FIELDS, "checksum"}:
            raise KeyError(f"fields {sorted(z.files)}")
        arrays = {name: z[name] for name in FIELDS}
        stored = str(z["checksum"])
    if _checksum(arrays) != stored:
        raise ValueError("checksum mismatch")
    return arrays


def _check_shapes(a: dict[str, np.ndarray], dim: int) -> None:
    if int(a["format"]) != CACHE_FORMAT:
        raise StaleCache(f"cache format {int(a['format'])}, expected {CACHE_FORMAT}")
    n, c = len(a["sample_ids"]), len(a["proto_ids"])
    wanted = {"sample_ids": ((n,), "i8"), "class_ids": ((n,), "i8"), "proto_ids": ((c,), "i8"),
              "sums": ((c, dim), "f8"), "index": ((len(a["index"]),), "u1")}
    for name, (shape, kind) in wanted.items():
        arr = a[name]
        if arr.shape != shape or arr.dtype.kind + str(arr.dtype.itemsize) != kind:
            raise ValueError(f"{name} has shape {arr.shape} and type {arr.dtype}, "
                             f"expected {shape} {kind}")
    if not np.array_equal(a["proto_ids"], np.unique(a["class_ids"])):
        raise ValueError("class prototypes do not match the samples' classes")
    if not np.isfinite(a["sums"]).all():
        raise ValueError("class prototypes are not finite")


def _check_binding(a: dict[str, np.ndarray], key: CacheKey, sample_ids: np.ndarray,
                   class_ids: np.ndarray) -> None:
    if str(a["gallery_id"]) != key.gallery_id:
        raise StaleCache("built for another gallery")
    if not (np.array_equal(a["sample_ids"], sample_ids)
            and np.array_equal(a["class_ids"], class_ids)):
        raise StaleCache("built from other samples")
    if str(a["content"]) != key.content:
        raise StaleCache("built from other embeddings")
