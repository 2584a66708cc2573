"""Back up and restore a gallery's database: consistent copies, checked before they count.

``backup`` copies ``gallery.sqlite`` with SQLite's online backup API (a consistent
snapshot even while a kiosk enrolls), checks the copy's integrity, fsyncs it and only then
moves it to its name. ``restore`` checks the backup first, then replaces the database
(the old write-ahead log is removed before, never replayed onto the restored file). The
FAISS cache needs no care: it is verified against the database's content on every open.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from tledge.errors import GalleryError
from tledge.runtime import gallery_db as gdb

DB_NAME = "gallery.sqlite"


def backup(gallery: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Write a checked copy of ``gallery``'s database to ``dest`` (a file); returns
    ``{"path", "bytes", "classes", "samples"}``."""
    source = Path(gallery) / DB_NAME
    if not source.is_file():
        raise GalleryError(f"no gallery at {gallery} (missing {DB_NAME})")
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / DB_NAME
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".backup-", suffix=".sqlite", dir=dest.parent)
    os.close(fd)
    try:
        src, _ = gdb.connect(source, read_only=True)
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            out.close()
            src.close()
        summary = check(Path(tmp))
        _fsync(Path(tmp))
        os.replace(tmp, dest)
        _fsync(dest.parent)
    except sqlite3.Error as exc:
        raise GalleryError(f"cannot back up {source} to {dest}: {exc}") from exc
    except OSError as exc:
        raise GalleryError(f"cannot write the backup {dest}: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"path": str(dest), "bytes": dest.stat().st_size, **summary}


def restore(backup_file: str | os.PathLike, gallery: str | os.PathLike) -> dict:
    """Replace ``gallery``'s database with ``backup_file`` after checking it. Stop every
    process using the gallery first (a kiosk keeps its open database until it restarts)."""
    backup_file, folder = Path(backup_file), Path(gallery)
    summary = check(backup_file)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".restore-", suffix=".sqlite", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, open(backup_file, "rb") as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        # The old WAL belongs to the old file: replayed onto the restored one it would
        # corrupt it. Removing it first loses only changes the restore discards anyway.
        for suffix in ("-wal", "-shm"):
            (folder / (DB_NAME + suffix)).unlink(missing_ok=True)
        os.replace(tmp, folder / DB_NAME)
        _fsync(folder)
    except OSError as exc:
        raise GalleryError(f"cannot restore {folder}: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"path": str(folder), **summary}


def check(path: Path) -> dict:
    """Integrity and identity of a database file: ``{"classes", "samples"}`` or GalleryError."""
    if not path.is_file() or path.stat().st_size == 0:
        raise GalleryError(f"{path} is not a gallery backup (missing or empty)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                raise GalleryError(f"{path} is damaged ({result}); use an older backup")
            meta = dict(db.execute("SELECT key, value FROM meta"))
            classes = db.execute("SELECT COUNT(*) FROM classes").fetchone()[0]
            samples = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise GalleryError(f"{path} is not a readable gallery backup ({exc})") from exc
    if "fingerprint" not in meta:
        raise GalleryError(f"{path} is not a tledge gallery database")
    return {"classes": classes, "samples": samples}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
