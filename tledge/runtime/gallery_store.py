"""The gallery's source of truth: one SQLite database (labels, samples, embeddings, crops).

Every change is one ``BEGIN IMMEDIATE`` transaction that bumps ``generation`` and writes a
fresh random ``change`` token, so a kill at any moment leaves the database as before or after
the change, concurrent writers queue on SQLite's lock, and a reader's in-memory index is
current exactly when (generation, token) still match (a restored copy gets new tokens).
Opening, migration and error wording live in ``gallery_db``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tledge.errors import GalleryError
from tledge.runtime import gallery_db as gdb

State = tuple[int, str]  # (generation, change token)


@dataclass(frozen=True)
class ClassInfo:
    label: str
    samples: int
    created: float
    updated: float


@dataclass
class Change:
    """One committed transaction: the state it started from and the one it left."""

    db: sqlite3.Connection
    before: State
    after: State = (-1, "")


@dataclass
class Snapshot:
    """The samples as of one state: ids and class ids (n,) int64 in id order, the sha256
    ``content`` over (id, class id, vector digest) rows, labels by class id, and the
    embeddings (n, dim) float32 when asked for."""

    state: State
    gallery_id: str
    sample_ids: np.ndarray
    class_ids: np.ndarray
    content: str
    labels: dict[int, str]
    vectors: np.ndarray | None = field(default=None, repr=False)
    damaged: dict[int, str] = field(default_factory=dict)  # with vectors: id -> problem


class GalleryStore:
    """Thin, thread-safe wrapper over the gallery's SQLite file."""

    def __init__(self, db_path: Path, read_only: bool = False) -> None:
        self.path = Path(db_path)
        self.db, self.read_only, self.read_only_why = gdb.connect_why(self.path, read_only)
        self.lock = threading.RLock()
        self.damage: str | None = None  # set once SQLite reports damage: no more writes

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- errors ----------------------------------------------------------------------------
    def _error(self, exc: sqlite3.Error) -> GalleryError:
        err = gdb.translate(self.path, exc)
        if "is damaged" in str(err):
            self.damage = str(exc)
        return err

    def check_writable(self) -> None:
        """Raise GalleryError when this gallery must not be changed (read-only, damaged)."""
        if self.read_only:
            raise gdb.read_only_error(self.path, self.read_only_why or "opened read-only")
        if self.damage is not None:
            raise gdb.damaged(self.path, self.damage)

    @contextmanager
    def reading(self, snapshot: bool = False) -> Iterator[sqlite3.Connection]:
        """Reads under the lock (in one read transaction with ``snapshot``); SQLite errors
        become GalleryErrors that say what happened."""
        with self.lock:
            try:
                if snapshot:
                    self.db.execute("BEGIN")
                yield self.db
                if snapshot:
                    self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                gdb.rollback(self.db)
                raise self._error(exc) from exc
            except BaseException:
                gdb.rollback(self.db)
                raise

    @contextmanager
    def transaction(self) -> Iterator[Change]:
        """One atomic write: commits with a new state, or rolls back on any error."""
        with self.lock:
            self.check_writable()
            try:
                self.db.execute("BEGIN IMMEDIATE")
                change = Change(self.db, self._state())
                yield change
                after = (change.before[0] + 1, uuid.uuid4().hex)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)",
                                (str(after[0]),))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('change', ?)", (after[1],))
                self.db.execute("COMMIT")
                change.after = after
            except sqlite3.Error as exc:
                gdb.rollback(self.db)
                raise self._error(exc) from exc
            except BaseException:
                gdb.rollback(self.db)
                raise

    # -- setup -----------------------------------------------------------------------------
    def initialise(self, meta: dict[str, str]) -> None:
        """Create the schema and the gallery's meta rows in one transaction."""
        rows = {**meta, "store_format": str(gdb.STORE_FORMAT), "generation": "0",
                "change": uuid.uuid4().hex, "gallery_id": gdb.new_gallery_id()}
        self.check_writable()
        with self.reading() as db:
            db.execute("BEGIN IMMEDIATE")
            # executescript() would commit early; run the schema inside our transaction.
            for statement in gdb.SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            # OR IGNORE: a gallery created concurrently by another process keeps its state.
            db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", rows.items())
            db.execute("COMMIT")

    def upgrade(self) -> None:
        """Migrate an older store format (writable galleries only; read-only ones are read
        as they are)."""
        with self.reading() as db:
            fmt = gdb.store_format(db)
        if fmt > gdb.STORE_FORMAT:
            raise GalleryError(f"gallery {self.path.parent} has store format {fmt}, newer than "
                               f"this tledge reads ({gdb.STORE_FORMAT}); upgrade tledge")
        if fmt < gdb.STORE_FORMAT and not self.read_only:
            self.check_writable()
            with self.reading() as db:
                gdb.migrate(db, self.path)

    @property
    def format(self) -> int:
        with self.reading() as db:
            return gdb.store_format(db)

    # -- meta ------------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        with self.lock:
            try:
                return dict(self.db.execute("SELECT key, value FROM meta"))
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    raise GalleryError(f"{self.path} is not a tledge gallery ({exc})") from exc
                raise self._error(exc) from exc
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def set_meta(self, key: str, value: str) -> Change:
        with self.transaction() as change:
            change.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        return change

    def _state(self) -> State:
        rows = dict(self.db.execute(
            "SELECT key, value FROM meta WHERE key IN ('generation', 'change')"))
        return int(rows.get("generation", 0)), rows.get("change", "")

    def state(self) -> State:
        with self.reading() as _:
            return self._state()

    def generation(self) -> int:
        return self.state()[0]

    # -- samples ---------------------------------------------------------------------------
    def content_digests(self, label: str) -> set[str]:
        """Image digests already stored in class ``label`` (empty for a new class)."""
        if self.format < 2:
            return set()
        with self.reading() as db:
            rows = db.execute(
                "SELECT s.content_digest FROM samples s JOIN classes c ON c.id = s.class_id "
                "WHERE c.label = ? AND s.content_digest IS NOT NULL", (label,)).fetchall()
        return {r[0] for r in rows}

    def add_samples(self, label: str, embeddings: np.ndarray, crops: Sequence[bytes | None],
                    sources: Sequence[str], digests: Sequence[str | None] | None = None,
                    dedupe: bool = False, fingerprint: str | None = None,
                    ) -> tuple[Change, int, list[int], list[int]]:
        """Insert samples for ``label`` (creating the class) in one transaction.

        With ``dedupe``, rows whose content digest is already in the class are skipped
        (checked inside the transaction, so a concurrent retry cannot double them).
        With ``fingerprint``, the gallery must still be bound to that model when the write
        commits (a fleet rollout or `gallery reembed` in another process may have switched
        it), so vectors of two models are never mixed.
        Returns (change, class id, new sample ids, positions of the rows inserted).
        """
        now = time.time()
        digests = list(digests) if digests is not None else [None] * len(embeddings)
        with self.transaction() as change:
            db = change.db
            if fingerprint is not None:
                bound = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
                if bound is None or bound[0] != fingerprint:
                    raise GalleryError(
                        f"gallery {self.path.parent} is now bound to another model (fingerprint "
                        f"{(bound or ['?'])[0][:12]}, e.g. after a fleet rollout or `gallery "
                        "reembed`); reopen it with that model")
            db.execute("INSERT INTO classes(label, created, updated) VALUES (?, ?, ?) "
                       "ON CONFLICT(label) DO UPDATE SET updated = excluded.updated",
                       (label, now, now))
            class_id = db.execute("SELECT id FROM classes WHERE label = ?", (label,)).fetchone()[0]
            stored = {r[0] for r in db.execute(
                "SELECT content_digest FROM samples WHERE class_id = ? AND content_digest "
                "IS NOT NULL", (class_id,))} if dedupe else set()
            ids, kept = [], []
            for i, (vec, crop, src, dig) in enumerate(zip(embeddings, crops, sources, digests)):
                if dedupe and dig is not None:
                    if dig in stored:
                        continue
                    stored.add(dig)
                vec = np.asarray(vec, "<f4")
                cur = db.execute(
                    "INSERT INTO samples(class_id, embedding, crop, source, created, "
                    "vector_digest, content_digest) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (class_id, vec.tobytes(), crop, src, now, gdb.vector_digest(vec), dig))
                ids.append(cur.lastrowid)
                kept.append(i)
        return change, class_id, ids, kept

    def remove(self, label: str) -> tuple[Change, int]:
        """(change, classes removed: 0 or 1)."""
        with self.transaction() as change:
            removed = change.db.execute("DELETE FROM classes WHERE label = ?", (label,)).rowcount
        return change, removed

    def rename(self, old: str, new: str) -> tuple[Change, dict[int, str]]:
        """(change, labels by class id as of that change)."""
        with self.transaction() as change:
            db = change.db
            if db.execute("SELECT 1 FROM classes WHERE label = ?", (new,)).fetchone():
                raise GalleryError(f"cannot rename {old!r} to {new!r}: {new!r} already exists")
            cur = db.execute("UPDATE classes SET label = ?, updated = ? WHERE label = ?",
                             (new, time.time(), old))
            if cur.rowcount == 0:
                raise GalleryError(f"no class named {old!r} in the gallery")
            labels = dict(db.execute("SELECT id, label FROM classes"))
        return change, labels

    def classes(self) -> list[ClassInfo]:
        with self.reading() as db:
            rows = db.execute(
                "SELECT c.label, COUNT(s.id), c.created, c.updated FROM classes c "
                "LEFT JOIN samples s ON s.class_id = c.id GROUP BY c.id ORDER BY c.label"
            ).fetchall()
        return [ClassInfo(*row) for row in rows]

    def class_labels(self) -> dict[int, str]:
        with self.reading() as db:
            return dict(db.execute("SELECT id, label FROM classes"))

    def snapshot(self, dim: int, vectors: bool = False) -> Snapshot:
        """Everything an index is built from or checked against, in one read transaction."""
        fmt = self.format
        cols = "id, class_id, " + ("vector_digest" if fmt >= 2 else "NULL")
        if vectors or fmt < 2:  # format 1 has no stored digests: hash the embeddings
            cols += ", embedding"
        with self.reading(snapshot=True) as db:
            state = self._state()
            meta = dict(db.execute("SELECT key, value FROM meta WHERE key = 'gallery_id'"))
            rows = db.execute(f"SELECT {cols} FROM samples ORDER BY id").fetchall()
            labels = dict(db.execute("SELECT id, label FROM classes"))
        ids = np.array([r[0] for r in rows], np.int64)
        cls = np.array([r[1] for r in rows], np.int64)
        content = hashlib.sha256()
        for row in rows:
            digest = row[2] if row[2] is not None else gdb.vector_digest(
                np.frombuffer(row[3], "<f4"))
            content.update(struct.pack("<qq", row[0], row[1]) + bytes(digest))
        vecs = self._vectors(rows, dim) if vectors else None
        bad = gdb.vector_problems(ids, [r[2] for r in rows], vecs) if vectors else {}
        return Snapshot(state, meta.get("gallery_id", ""), ids, cls, content.hexdigest(),
                        labels, vecs, bad)

    def _vectors(self, rows: list[tuple], dim: int) -> np.ndarray:
        bad = [r[0] for r in rows if len(r[3]) != 4 * dim]
        if bad:
            raise gdb.damaged(self.path, f"{len(bad)} embeddings are not {dim} float32 values, "
                                         f"e.g. sample {bad[0]}")
        flat = np.frombuffer(b"".join(r[3] for r in rows), "<f4")
        return flat.reshape(len(rows), dim).astype(np.float32)

    def crops(self, label: str | None = None,
              ids: Sequence[int] | None = None) -> list[tuple[int, str, bytes | None]]:
        """(sample id, label, JPEG bytes) for one class, some sample ids, or all."""
        sql = "SELECT s.id, c.label, s.crop FROM samples s JOIN classes c ON c.id = s.class_id"
        args: tuple = ()
        if label is not None:
            sql, args = sql + " WHERE c.label = ?", (label,)
        elif ids is not None:
            sql, args = sql + f" WHERE s.id IN ({','.join('?' * len(ids))})", tuple(ids)
        with self.reading() as db:
            return db.execute(sql + " ORDER BY s.id", args).fetchall()

    def sample_ids(self) -> list[int]:
        with self.reading() as db:
            return [r[0] for r in db.execute("SELECT id FROM samples ORDER BY id")]

    def replace_embeddings(self, ids: Sequence[int], embeddings: np.ndarray,
                           meta: dict[str, str]) -> Change:
        """Swap every sample's embedding (a re-embed); refused if the samples changed since
        ``ids`` were read, so no sample keeps an embedding of the old model."""
        with self.transaction() as change:
            now = [r[0] for r in change.db.execute("SELECT id FROM samples ORDER BY id")]
            if now != list(ids):
                raise GalleryError("the gallery changed while it was being re-embedded; "
                                   "run the re-embed again")
            change.db.executemany(
                "UPDATE samples SET embedding = ?, vector_digest = ? WHERE id = ?",
                [(np.asarray(v, "<f4").tobytes(), gdb.vector_digest(v), i)
                 for i, v in zip(ids, embeddings)])
            change.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
        return change

    def integrity_ok(self) -> bool:
        with self.reading() as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
