"""Back up and restore a gallery's database: consistent copies, checked before they count.

``backup`` copies ``gallery.sqlite`` with SQLite's online backup API (a consistent
snapshot even while a kiosk enrolls), checks the copy's integrity, fsyncs it and only then
moves it to its name. ``restore`` copies the backup (and a write-ahead log beside it) the
same way into the gallery folder, checks the copy, then replaces the database (the old
write-ahead log is removed before, never replayed onto the restored file). The
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
IN_USE_TIMEOUT_S = 0.5  # how long a restore waits for the gallery to be free


def backup(gallery: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Write a checked copy of ``gallery``'s database to ``dest`` (a file, mode 0644 less
    the umask); returns ``{"path", "bytes", "classes", "samples"}``."""
    source = Path(gallery) / DB_NAME
    if not source.is_file():
        raise GalleryError(f"no gallery at {gallery} (missing {DB_NAME})")
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / DB_NAME
    if _same_file(dest, source):
        raise GalleryError(f"the backup {dest} would replace the gallery's own database; "
                           f"write it somewhere else")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".backup-", suffix=".sqlite", dir=dest.parent)
    os.close(fd)
    try:
        src, _ = gdb.connect(source, read_only=True)
        summary = _copy(src, Path(tmp))
        os.chmod(tmp, 0o644 & ~_umask())
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
    """Replace ``gallery``'s database with ``backup_file`` (with its write-ahead log, if
    any) after checking it; refused while another process has the gallery open. The
    restored file gets the mode (and, as root, the owner) of the one it replaces. Returns
    ``{"path", "classes", "samples"}`` as written."""
    backup_file, folder = Path(backup_file), Path(gallery)
    target = folder / DB_NAME
    if _same_file(backup_file, target):
        raise GalleryError(f"{backup_file} is the gallery's own database; restore from a "
                           f"backup file elsewhere")
    check(backup_file)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".restore-", suffix=".sqlite", dir=folder)
    os.close(fd)
    try:
        src = sqlite3.connect(gdb.uri(backup_file) + "?mode=ro", uri=True)
        summary = _copy(src, Path(tmp))
        _copy_permissions(Path(tmp), target if target.is_file() else folder)
        _refuse_if_in_use(target)
        # The old WAL belongs to the old file: replayed onto the restored one it would
        # corrupt it. Removing it first loses only changes the restore discards anyway.
        for suffix in ("-wal", "-shm"):
            (folder / (DB_NAME + suffix)).unlink(missing_ok=True)
        os.replace(tmp, target)
        _fsync(folder)
    except sqlite3.Error as exc:
        raise GalleryError(f"cannot restore {folder} from {backup_file}: {exc}") from exc
    except OSError as exc:
        raise GalleryError(f"cannot restore {folder}: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"path": str(folder), **summary}


def _copy(src: sqlite3.Connection, tmp: Path) -> dict:
    """Copy ``src`` (closed after) into ``tmp`` through SQLite's backup API as one
    self-contained file, check it and fsync it; the counts of what ``tmp`` holds."""
    out = sqlite3.connect(tmp)
    try:
        src.backup(out)
        out.execute("PRAGMA journal_mode=DELETE")
    finally:
        out.close()
        src.close()
    summary = check(tmp)
    _fsync(tmp)
    return summary


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _refuse_if_in_use(db_path: Path) -> None:
    """Leaving WAL mode needs the only connection: if another process (a kiosk) holds the
    gallery open, a restore under it would silently lose its later enrollments."""
    if not db_path.is_file():
        return
    db = sqlite3.connect(db_path, timeout=IN_USE_TIMEOUT_S)
    try:
        mode = db.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
    except sqlite3.Error as exc:  # busy: in use; anything else (damage) is what we replace
        name = getattr(exc, "sqlite_errorname", "") or ""
        busy = name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc)
        mode = "wal" if busy else "damaged"
    finally:
        db.close()
    if str(mode).lower() == "wal":
        raise GalleryError(f"the gallery {db_path.parent} is in use by another process (a "
                           f"running kiosk?); stop it first, then restore")


def _copy_permissions(tmp: Path, like: Path) -> None:
    """Give ``tmp`` the mode (file bits of a folder's) and, as root, the owner of ``like``:
    a kiosk running as another user must still open the restored gallery."""
    st = like.stat()
    os.chmod(tmp, st.st_mode & 0o666)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check(path: Path) -> dict:
    """Integrity and identity of a database file: ``{"classes", "samples"}`` or GalleryError."""
    if not path.is_file() or path.stat().st_size == 0:
        raise GalleryError(f"{path} is not a gallery backup (missing or empty)")
    try:
        db = sqlite3.connect(gdb.uri(path) + "?mode=ro", uri=True)
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
