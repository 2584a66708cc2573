"""A device's gallery as a replica of the hub: identities, the outbox, applying the log.

The fleet's tables live in the gallery's own SQLite file. Triggers on ``classes`` and
``samples`` give every new class and sample a UUID and write an outbox row IN THE SAME
TRANSACTION as the change, whichever process makes it (kiosk, GUI, ``tledge enroll``), so a
change is never lost between the gallery and the outbox. While the sync agent applies the
hub's log it sets ``applying`` inside its own transaction, which silences the triggers:
remote changes are never echoed back.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge.fleet import FleetError
from tledge.runtime.gallery import DB_NAME
from tledge.runtime.gallery_store import GalleryStore

_UUID = ("(SELECT lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) "
         "|| '-' || substr(h, 17, 4) || '-' || substr(h, 21, 12)) FROM (SELECT "
         "hex(randomblob(16)) AS h))")
_QUIET = "(SELECT value FROM fleet_state WHERE key = 'applying') = '0'"
_BASE = "(SELECT CAST(value AS INTEGER) FROM fleet_state WHERE key = 'applied_seq')"
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_OUTBOX = ("INSERT INTO fleet_outbox(change_id, base_seq, kind, class_uuid, sample_uuid, label, "
           "crop, vector, fingerprint, created)")
_CLASS_UUID = "(SELECT uuid FROM fleet_class WHERE class_id = {}.{})"

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS fleet_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleet_class (uuid TEXT PRIMARY KEY, "
    "class_id INTEGER NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS fleet_sample (uuid TEXT PRIMARY KEY, "
    "sample_id INTEGER NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS fleet_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "change_id TEXT NOT NULL UNIQUE, base_seq INTEGER NOT NULL, kind TEXT NOT NULL, "
    "class_uuid TEXT, sample_uuid TEXT, label TEXT, crop BLOB, vector BLOB, fingerprint TEXT, "
    "created REAL NOT NULL)",
    f"""CREATE TRIGGER IF NOT EXISTS fleet_class_insert AFTER INSERT ON classes WHEN {_QUIET}
    BEGIN
        INSERT OR REPLACE INTO fleet_class(uuid, class_id) VALUES ({_UUID}, NEW.id);
        {_OUTBOX} VALUES ({_UUID}, {_BASE}, 'create', {_CLASS_UUID.format('NEW', 'id')},
                          NULL, NEW.label, NULL, NULL, NULL, {_NOW});
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS fleet_class_rename AFTER UPDATE OF label ON classes
    WHEN {_QUIET} AND OLD.label IS NOT NEW.label
    BEGIN
        {_OUTBOX} VALUES ({_UUID}, {_BASE}, 'rename', {_CLASS_UUID.format('NEW', 'id')},
                          NULL, NEW.label, NULL, NULL, NULL, {_NOW});
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS fleet_class_delete AFTER DELETE ON classes
    BEGIN
        {_OUTBOX} SELECT {_UUID}, {_BASE}, 'delete', uuid, NULL, OLD.label, NULL, NULL, NULL,
                         {_NOW} FROM fleet_class WHERE class_id = OLD.id AND {_QUIET};
        DELETE FROM fleet_class WHERE class_id = OLD.id;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS fleet_sample_insert AFTER INSERT ON samples WHEN {_QUIET}
    BEGIN
        INSERT OR REPLACE INTO fleet_sample(uuid, sample_id) VALUES ({_UUID}, NEW.id);
        {_OUTBOX} VALUES ({_UUID}, {_BASE}, 'add', {_CLASS_UUID.format('NEW', 'class_id')},
                          (SELECT uuid FROM fleet_sample WHERE sample_id = NEW.id), NULL,
                          NEW.crop, NEW.embedding,
                          (SELECT value FROM meta WHERE key = 'fingerprint'), {_NOW});
    END""",
    # A sample deleted with its class (cascade) is covered by the class's delete.
    f"""CREATE TRIGGER IF NOT EXISTS fleet_sample_delete AFTER DELETE ON samples
    BEGIN
        {_OUTBOX} SELECT {_UUID}, {_BASE}, 'remove', NULL, uuid, NULL, NULL, NULL, NULL, {_NOW}
            FROM fleet_sample WHERE sample_id = OLD.id AND {_QUIET}
            AND EXISTS (SELECT 1 FROM classes WHERE id = OLD.class_id);
        DELETE FROM fleet_sample WHERE sample_id = OLD.id;
    END""",
]


@dataclass(frozen=True)
class OutboxRow:
    id: int
    change_id: str
    base_seq: int
    kind: str
    class_uuid: str | None
    sample_uuid: str | None
    label: str | None
    crop: bytes | None
    vector: bytes | None
    fingerprint: str | None

    def payload(self) -> dict:
        """The request the hub's ``tledge_push`` receives (crop and vector go separately)."""
        if self.kind == "add":
            return {"class": self.class_uuid, "sample": self.sample_uuid,
                    "digest": content_digest(self.crop, self.vector)}
        if self.kind == "remove":
            return {"sample": self.sample_uuid}
        return {"class": self.class_uuid, "label": self.label}


def content_digest(crop: bytes | None, vector: bytes | None = None) -> str:
    """sha256 of the crop's bytes: crops travel byte for byte, so every device agrees."""
    if crop is not None:
        return hashlib.sha256(crop).hexdigest()
    return "vector:" + hashlib.sha256(vector or b"").hexdigest()


class Replica:
    """The fleet side of one gallery file, on its own SQLite connection."""

    def __init__(self, gallery_path: Path) -> None:
        db_path = Path(gallery_path) / DB_NAME
        if not db_path.is_file():
            raise FleetError(f"no gallery at {gallery_path} (missing {DB_NAME}); enroll a "
                             "class first or let the first sync create it with --model")
        self.store = GalleryStore(db_path)
        if hasattr(self.store, "upgrade"):
            self.store.upgrade()  # an older store format is migrated first, as Gallery.open does
        self.db = self.store.db
        self.attach()

    def close(self) -> None:
        self.store.close()

    def attach(self) -> None:
        """Create the fleet tables and triggers, and give existing rows identities."""
        with self.store.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA:
                    self.db.execute(statement)
                defaults = {"applying": "0", "applied_seq": "0", "device_id": str(uuid.uuid4())}
                self.db.executemany("INSERT OR IGNORE INTO fleet_state VALUES (?, ?)",
                                    defaults.items())
                self._adopt()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _adopt(self) -> None:
        """Rows written before the gallery joined a fleet (or while the triggers were
        missing) get UUIDs and outbox entries, classes first."""
        base = self.db.execute(f"SELECT {_BASE}").fetchone()[0]
        fp = self.db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()[0]
        for cid, label in self.db.execute(
                "SELECT id, label FROM classes WHERE id NOT IN (SELECT class_id FROM fleet_class)"
                " ORDER BY id").fetchall():
            cu = str(uuid.uuid4())
            self.db.execute("INSERT INTO fleet_class VALUES (?, ?)", (cu, cid))
            self._queue(base, "create", cu, None, label, None, None, None)
        for sid, cid, crop, vec in self.db.execute(
                "SELECT id, class_id, crop, embedding FROM samples WHERE id NOT IN "
                "(SELECT sample_id FROM fleet_sample) ORDER BY id").fetchall():
            su = str(uuid.uuid4())
            self.db.execute("INSERT INTO fleet_sample VALUES (?, ?)", (su, sid))
            cu = self.db.execute("SELECT uuid FROM fleet_class WHERE class_id = ?",
                                 (cid,)).fetchone()[0]
            self._queue(base, "add", cu, su, None, crop, vec, fp)

    def _queue(self, base, kind, cu, su, label, crop, vec, fp) -> None:
        self.db.execute(f"{_OUTBOX} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (str(uuid.uuid4()), base, kind, cu, su, label, crop, vec, fp, time.time()))

    # -- state -----------------------------------------------------------------------------
    def state(self, key: str) -> str | None:
        with self.store.lock:
            row = self.db.execute("SELECT value FROM fleet_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str) -> None:
        with self.store.lock:
            self.db.execute("INSERT OR REPLACE INTO fleet_state VALUES (?, ?)", (key, value))

    @property
    def device_id(self) -> str:
        return self.state("device_id")

    @property
    def applied_seq(self) -> int:
        return int(self.state("applied_seq"))

    def fingerprint(self) -> str:
        return self.store.meta()["fingerprint"]

    def pending(self) -> int:
        with self.store.lock:
            return self.db.execute("SELECT count(*) FROM fleet_outbox").fetchone()[0]

    def outbox(self, limit: int = 200) -> list[OutboxRow]:
        with self.store.lock:
            rows = self.db.execute(
                "SELECT id, change_id, base_seq, kind, class_uuid, sample_uuid, label, crop, "
                "vector, fingerprint FROM fleet_outbox ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [OutboxRow(*row) for row in rows]

    def drop_outbox(self, last_id: int) -> None:
        """Forget pushed rows, once the hub has committed them."""
        with self.store.lock:
            self.db.execute("DELETE FROM fleet_outbox WHERE id <= ?", (last_id,))

    def has_samples(self, uuids: list[str]) -> set[str]:
        with self.store.lock:
            return {u for u in uuids if self.db.execute(
                "SELECT 1 FROM fleet_sample WHERE uuid = ?", (u,)).fetchone()}

    def samples(self) -> list[tuple[int, str, bytes | None]]:
        """(local sample id, uuid, crop) of every sample."""
        with self.store.lock:
            return self.db.execute(
                "SELECT s.id, f.uuid, s.crop FROM samples s JOIN fleet_sample f "
                "ON f.sample_id = s.id ORDER BY s.id").fetchall()

    def digest(self) -> str:
        """The same digest as ``hub.hub_digest`` over this replica's classes and samples."""
        from tledge.fleet.hub import state_digest

        with self.store.lock:
            rows = self.db.execute(
                "SELECT fc.uuid, c.label, fs.uuid, s.crop FROM classes c "
                "LEFT JOIN fleet_class fc ON fc.class_id = c.id "
                "LEFT JOIN samples s ON s.class_id = c.id "
                "LEFT JOIN fleet_sample fs ON fs.sample_id = s.id").fetchall()
        return state_digest([(cu, lab, su, content_digest(crop) if su else None)
                             for cu, lab, su, crop in rows])

    # -- applying the hub's log ------------------------------------------------------------
    def apply(self, effects: list[dict], last_seq: int,
              fetched: dict[str, tuple[bytes | None, np.ndarray | None]]) -> int:
        """Apply ``effects`` (in hub order) and record ``last_seq``, all in one transaction
        that bumps the gallery's generation (so every process's FAISS cache follows).

        ``fetched``: crop and this device's embedding for each sample new to it. Returns the
        number of samples that could not be added (no crop and no embedding).
        """
        from tledge.fleet.apply import apply_effect

        skipped = 0
        with self.store.transaction() as change:
            db = tx_db(change)
            db.execute("UPDATE fleet_state SET value = '1' WHERE key = 'applying'")
            for effect in effects:
                skipped += apply_effect(db, effect, fetched)
            db.execute("UPDATE fleet_state SET value = ? WHERE key = 'applied_seq'",
                       (str(last_seq),))
            db.execute("UPDATE fleet_state SET value = '0' WHERE key = 'applying'")
        return skipped


def tx_db(change) -> sqlite3.Connection:
    """The connection inside ``GalleryStore.transaction()`` (a Change, or the connection)."""
    return getattr(change, "db", change)


def vector_digest_column(db: sqlite3.Connection) -> bool:
    """True for store format 2+, whose samples carry ``vector_digest`` (the cache's key)."""
    return any(r[1] == "vector_digest" for r in db.execute("PRAGMA table_info(samples)"))


def vector_digest(vector: np.ndarray) -> bytes:
    """sha256 of the little-endian float32 bytes, as the gallery store computes it."""
    return hashlib.sha256(np.asarray(vector, "<f4").tobytes()).digest()


def open_db(gallery_path: Path) -> sqlite3.Connection:
    """A plain connection to a gallery's database (tests and tools)."""
    return sqlite3.connect(str(Path(gallery_path) / DB_NAME), timeout=60.0)
