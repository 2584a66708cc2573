"""The gallery's source of truth: one SQLite database (labels, samples, embeddings, crops).

Every change is one ``BEGIN IMMEDIATE`` transaction that also bumps ``generation``, so a
kill at any moment leaves the database as before or after the change, concurrent writers
queue on SQLite's lock, and readers in other processes see when their cached index is stale.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge.errors import GalleryError

STORE_FORMAT = 1
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
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_class ON samples(class_id);
"""


@dataclass(frozen=True)
class ClassInfo:
    label: str
    samples: int
    created: float
    updated: float


class GalleryStore:
    """Thin, thread-safe wrapper over the gallery's SQLite file."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path
        try:
            self.db = sqlite3.connect(
                str(db_path), timeout=60.0, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{db_path} is not a readable gallery database ({exc})") from exc
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: commits and bumps ``generation``, or rolls back on any error."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def initialise(self, meta: dict[str, str]) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                # executescript() would commit early; run the schema inside our transaction.
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                rows = {**meta, "store_format": str(STORE_FORMAT), "generation": "0"}
                # OR IGNORE: a gallery created concurrently by another process keeps its state.
                self.db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", rows.items())
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def meta(self) -> dict[str, str]:
        with self.lock:
            try:
                return dict(self.db.execute("SELECT key, value FROM meta"))
            except sqlite3.DatabaseError as exc:
                raise GalleryError(f"{self.path} is not a tledge gallery ({exc})") from exc

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def generation(self) -> int:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0])

    def add_samples(
        self,
        label: str,
        embeddings: np.ndarray,
        crops: Sequence[bytes | None],
        sources: Sequence[str],
    ) -> tuple[int, list[int]]:
        """Insert samples for ``label`` (creating the class); returns (class_id, sample ids)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO classes(label, created, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(label) DO UPDATE SET updated = excluded.updated",
                (label, now, now),
            )
            class_id = db.execute("SELECT id FROM classes WHERE label = ?", (label,)).fetchone()[0]
            ids = []
            for vec, crop, src in zip(embeddings, crops, sources):
                cur = db.execute(
                    "INSERT INTO samples(class_id, embedding, crop, source, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (class_id, np.asarray(vec, np.float32).tobytes(), crop, src, now),
                )
                ids.append(cur.lastrowid)
        return class_id, ids

    def remove(self, label: str) -> int:
        with self.transaction() as db:
            cur = db.execute("DELETE FROM classes WHERE label = ?", (label,))
            return cur.rowcount

    def rename(self, old: str, new: str) -> None:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM classes WHERE label = ?", (new,)).fetchone():
                raise GalleryError(f"cannot rename {old!r} to {new!r}: {new!r} already exists")
            cur = db.execute(
                "UPDATE classes SET label = ?, updated = ? WHERE label = ?", (new, time.time(), old)
            )
            if cur.rowcount == 0:
                raise GalleryError(f"no class named {old!r} in the gallery")

    def classes(self) -> list[ClassInfo]:
        with self.lock:
            rows = self.db.execute(
                "SELECT c.label, COUNT(s.id), c.created, c.updated FROM classes c "
                "LEFT JOIN samples s ON s.class_id = c.id GROUP BY c.id ORDER BY c.label"
            ).fetchall()
        return [ClassInfo(*row) for row in rows]

    def class_labels(self) -> dict[int, str]:
        with self.lock:
            return dict(self.db.execute("SELECT id, label FROM classes"))

    def load_vectors(self, dim: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(generation, sample ids (n,), class ids (n,), embeddings (n, dim)) in one snapshot."""
        with self.lock:
            self.db.execute("BEGIN")
            try:
                gen = self.generation()
                rows = self.db.execute(
                    "SELECT id, class_id, embedding FROM samples ORDER BY id"
                ).fetchall()
            finally:
                self.db.execute("COMMIT")
        ids = np.array([r[0] for r in rows], np.int64)
        cls = np.array([r[1] for r in rows], np.int64)
        vecs = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(len(rows), dim)
        return gen, ids, cls, vecs.copy()

    def crops(self, label: str | None = None) -> list[tuple[int, str, bytes | None]]:
        """(sample id, label, JPEG bytes) for one class or all."""
        sql = "SELECT s.id, c.label, s.crop FROM samples s JOIN classes c ON c.id = s.class_id"
        args: tuple = ()
        if label is not None:
            sql, args = sql + " WHERE c.label = ?", (label,)
        with self.lock:
            return self.db.execute(sql + " ORDER BY s.id", args).fetchall()

    def replace_embeddings(self, ids: Sequence[int], embeddings: np.ndarray,
                           meta: dict[str, str]) -> None:
        with self.transaction() as db:
            db.executemany(
                "UPDATE samples SET embedding = ? WHERE id = ?",
                [(np.asarray(v, np.float32).tobytes(), i) for i, v in zip(ids, embeddings)],
            )
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())

    def integrity_ok(self) -> bool:
        with self.lock:
            return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
