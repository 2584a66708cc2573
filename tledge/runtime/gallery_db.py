"""Opening a gallery's SQLite file: read-write or read-only, checked, migrated, with errors
that name the real cause in one line (a full disk, a damaged file, a read-only gallery).

Format 2 adds, per sample, ``vector_digest`` (sha256 of the float32 embedding bytes: what
the index cache is bound to) and ``content_digest`` (sha256 of the decoded image: what makes
enrollment idempotent; NULL for samples never deduplicated against), and a random
``gallery_id`` in ``meta``. Format-1 galleries are migrated in one transaction when opened
for writing; opened read-only they are read as they are.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import urllib.parse
import uuid
from pathlib import Path

import numpy as np

from tledge.errors import GalleryError

log = logging.getLogger(__name__)

STORE_FORMAT = 2
# `PRAGMA quick_check` on open below this database size (file + WAL): ~10 ms per MiB, so at
# most about half a second; larger galleries are checked when SQLite reports damage in use.
QUICK_CHECK_MAX_BYTES = 64 * 2**20
BUSY_TIMEOUT_S = 60.0
# Free space below which a failed open counts as "disk full" (the -shm alone needs 32 KiB).
DISK_FULL_BYTES = 1 << 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS classes (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    crop BLOB,
    source TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    vector_digest BLOB,
    content_digest TEXT
);
CREATE INDEX IF NOT EXISTS samples_class ON samples(class_id);
CREATE INDEX IF NOT EXISTS samples_content ON samples(class_id, content_digest);
"""


def vector_digest(vector: np.ndarray) -> bytes:
    """sha256 of one embedding's little-endian float32 bytes (32 bytes)."""
    return hashlib.sha256(np.asarray(vector, "<f4").tobytes()).digest()


def vector_problems(ids: np.ndarray, digests: list, vectors: np.ndarray) -> dict[int, str]:
    """{sample id: what is wrong} for stored embeddings (n, dim) that cannot be trusted: not
    matching their stored digest (a flipped bit), not finite, or not unit length. One such
    vector would otherwise win (or poison) every query."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1) if len(vectors) else []
    bad: dict[int, str] = {}
    for sid, digest, vec, norm in zip(ids, digests, vectors, norms):
        if digest is not None and vector_digest(vec) != bytes(digest):
            bad[int(sid)] = "does not match its digest"
        elif not np.isfinite(vec).all():
            bad[int(sid)] = "is not finite"
        elif abs(norm - 1.0) > 1e-3:
            bad[int(sid)] = f"has length {norm:.4g}, not 1"
    return bad


def new_gallery_id() -> str:
    return uuid.uuid4().hex


def damaged(path: Path, exc: BaseException | str) -> GalleryError:
    why = " ".join(str(exc).replace("*** in database main ***", "").split())
    why = why if len(why) <= 200 else why[:197] + "..."
    return GalleryError(
        f"gallery database {path} is damaged ({why}); restore it from a backup or recover it "
        f"with `sqlite3 {path} '.recover' | sqlite3 recovered.sqlite`")


def uri(path: Path) -> str:
    """A ``file:`` URI for ``path`` with '%', '#', '?' escaped (else SQLite opens another
    file than the one named)."""
    return "file:" + urllib.parse.quote(str(Path(path).resolve()))


def read_only_error(path: Path, why: str = "opened read-only") -> GalleryError:
    return GalleryError(f"gallery {path.parent} is read-only ({why}); make it writable, or "
                        f"copy it somewhere writable, to change it")


def translate(path: Path, exc: sqlite3.Error) -> GalleryError:
    """A one-line GalleryError naming the real cause of a SQLite error on ``path``."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return GalleryError(f"cannot write gallery database {path}: database or disk is full; "
                            f"free some space on its disk and retry")
    if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
        return damaged(path, text)
    if name.startswith("SQLITE_NOTADB") or "not a database" in text:
        return GalleryError(f"{path} is not a readable gallery database ({text}); if it was "
                            f"one, restore it from a backup")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return read_only_error(path, text)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return GalleryError(f"gallery database {path} stayed locked by another process for "
                            f"{BUSY_TIMEOUT_S:.0f} s ({text}); retry when it is done")
    return GalleryError(f"gallery database {path}: {text}")


def _is_read_only(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")) or (
        "readonly" in str(exc) or "unable to open" in str(exc))


def _writable(path: Path) -> bool:
    """False where the OS says no (permissions, a read-only mount: access(2) checks EROFS
    even for root); a missing file is creatable when its folder is writable."""
    folder_ok = os.access(path.parent, os.W_OK)
    return folder_ok and (not path.exists() or os.access(path, os.W_OK))


def connect(path: Path, read_only: bool = False) -> tuple[sqlite3.Connection, bool]:
    """(connection, read_only): read-write when allowed, else read-only. Damage found by a
    quick check (small files) raises GalleryError."""
    db, ro, _ = connect_why(path, read_only)
    return db, ro


def connect_why(path: Path, read_only: bool = False) -> tuple[sqlite3.Connection, bool, str]:
    """``connect`` plus why it is read-only ("" when writable), for write errors to say."""
    if not read_only and _writable(path):
        try:
            return _checked(path, _open_rw(path)), False, ""
        except sqlite3.Error as exc:
            if _disk_full(path, exc):
                # Not even the -shm/-wal can be created: recognition still works from the
                # main file alone, so a kiosk keeps running instead of restart-looping.
                log.warning("gallery %s: disk full: opened read-only (%s); free some space "
                            "on its disk to enroll again", path, exc)
                return _checked(path, _open_ro(path, immutable=True)), True, "disk full"
            if not _is_read_only(exc):
                raise translate(path, exc) from exc
            log.info("gallery %s cannot be written (%s); opening it read-only", path, exc)
    elif not read_only:
        log.info("gallery %s is not writable; opening it read-only", path)
    return _checked(path, _open_ro(path)), True, "opened read-only"


def _disk_full(path: Path, exc: sqlite3.Error) -> bool:
    """An open that failed for want of space (SQLite says SQLITE_FULL or, creating the
    -shm, SQLITE_IOERR) on a disk with (almost) no space left."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if not (name.startswith(("SQLITE_IOERR", "SQLITE_FULL"))
            or "disk I/O error" in str(exc) or "disk is full" in str(exc)):
        return False
    try:
        return shutil.disk_usage(path.parent).free < DISK_FULL_BYTES
    except OSError:
        return False


def _open_rw(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                         check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        db.close()
        raise
    return db


def _open_ro(path: Path, immutable: bool = False) -> sqlite3.Connection:
    """``mode=ro`` first; where WAL's shared-memory file cannot be created (a read-only
    folder) ``immutable=1``, which reads the main file alone (at once with ``immutable``)."""
    if not path.is_file():
        raise read_only_error(path, "its folder cannot be written, so no gallery can be "
                                    "created there")
    base = uri(path)
    last: sqlite3.Error | None = None
    tries = ("?mode=ro&immutable=1",) if immutable else ("?mode=ro", "?mode=ro&immutable=1")
    for flags in tries:
        db = sqlite3.connect(base + flags, uri=True, timeout=BUSY_TIMEOUT_S,
                             isolation_level=None, check_same_thread=False)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            db.close()
            if not _is_read_only(exc):
                raise translate(path, exc) from exc
            last = exc
            continue
        if "immutable" in flags and _wal_size(path):
            log.warning("gallery %s is read-only and has an unmerged write-ahead log; the "
                        "latest changes may not be visible", path)
        return db
    raise GalleryError(f"cannot open gallery database {path} read-only ({last})")


def _wal_size(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.is_file() else 0


def _checked(path: Path, db: sqlite3.Connection) -> sqlite3.Connection:
    """``db`` after a quick integrity check when the file is small enough for it to be cheap."""
    if path.stat().st_size + _wal_size(path) >= QUICK_CHECK_MAX_BYTES:
        return db
    try:
        rows = db.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.Error as exc:
        db.close()
        err = translate(path, exc)
        raise err from exc
    if [r[0] for r in rows] != ["ok"]:
        db.close()
        raise damaged(path, "; ".join(r[0] for r in rows))
    return db


def store_format(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'store_format'").fetchone()
    return int(row[0]) if row else 1


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring a format-1 gallery to STORE_FORMAT in one transaction (caller holds the lock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if store_format(db) < 2:  # another process may have migrated it meanwhile
            for column in ("vector_digest BLOB", "content_digest TEXT"):
                db.execute(f"ALTER TABLE samples ADD COLUMN {column}")
            rows = db.execute("SELECT id, embedding FROM samples").fetchall()
            db.executemany("UPDATE samples SET vector_digest = ? WHERE id = ?",
                           [(vector_digest(np.frombuffer(e, "<f4")), i) for i, e in rows])
            db.execute("CREATE INDEX IF NOT EXISTS samples_content "
                       "ON samples(class_id, content_digest)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('gallery_id', ?)", (new_gallery_id(),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('store_format', ?)",
                       (str(STORE_FORMAT),))
            log.info("gallery %s migrated to store format %d (%d samples)", path, STORE_FORMAT,
                     len(rows))
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


def rollback(db: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open; SQLite may have ended it already (a full
    disk does), and a failing ROLLBACK must never hide the error that caused it."""
    if not db.in_transaction:
        return
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("rollback failed (%s); SQLite restores the database on next open", exc)
