"""Replaying one effect of the hub's change log on a device's SQLite gallery.

Effects state an absolute outcome (this class exists with this label, this sample lives in
this class, this one is gone), so replaying the log in order reaches the hub's state whatever
the device did optimistically before: a change of its own that the hub redirected (a merge)
or refused (a reject) is undone here. Runs inside the replica's transaction, with the fleet
triggers silenced.
"""

from __future__ import annotations

import sqlite3
import time

import numpy as np

from tledge.fleet.replica import vector_digest, vector_digest_column


def apply_effect(db: sqlite3.Connection, effect: dict,
                 fetched: dict[str, tuple[bytes | None, np.ndarray | None]]) -> int:
    """Apply one effect; returns 1 when a sample had to be skipped (nothing to embed)."""
    op = effect["op"]
    if op in ("create", "rename"):
        ensure_class(db, effect["class"], effect["label"])
    elif op == "merge":
        into = ensure_class(db, effect["into"], effect["label"])
        source = _class_id(db, effect["from"])
        if source is not None and source != into:
            db.execute("UPDATE samples SET class_id = ? WHERE class_id = ?", (into, source))
            db.execute("DELETE FROM classes WHERE id = ?", (source,))
        for sample in effect.get("rejected", []):
            _delete_sample(db, sample)
    elif op == "add":
        return _add_sample(db, effect, fetched)
    elif op in ("reject", "remove"):
        _delete_sample(db, effect["sample"])
    elif op == "delete":
        cid = _class_id(db, effect["class"])
        if cid is not None:
            db.execute("DELETE FROM classes WHERE id = ?", (cid,))
    return 0


def _class_id(db: sqlite3.Connection, class_uuid: str) -> int | None:
    row = db.execute("SELECT class_id FROM fleet_class WHERE uuid = ?", (class_uuid,)).fetchone()
    return row[0] if row else None


def ensure_class(db: sqlite3.Connection, class_uuid: str, label: str,
                 relabel: bool = True) -> int:
    """The local class for ``class_uuid``, created or relabelled to ``label``.

    Another local class holding ``label`` can only be an optimistic local change the hub has
    not ordered yet; it is merged in now, as the hub will (its own pushed change then
    reaches the same outcome or moves the samples again).
    """
    now = time.time()
    cid = _class_id(db, class_uuid)
    holder = db.execute("SELECT id FROM classes WHERE label = ?", (label,)).fetchone()
    holder_id = holder[0] if holder else None
    if cid is None and holder_id is not None:
        db.execute("INSERT OR REPLACE INTO fleet_class(uuid, class_id) VALUES (?, ?)",
                   (class_uuid, holder_id))
        return holder_id
    if cid is None:
        cur = db.execute("INSERT INTO classes(label, created, updated) VALUES (?, ?, ?)",
                         (label, now, now))
        db.execute("INSERT INTO fleet_class(uuid, class_id) VALUES (?, ?)",
                   (class_uuid, cur.lastrowid))
        return cur.lastrowid
    if not relabel:
        return cid
    if holder_id is not None and holder_id != cid:
        db.execute("UPDATE samples SET class_id = ? WHERE class_id = ?", (cid, holder_id))
        db.execute("DELETE FROM classes WHERE id = ?", (holder_id,))
    db.execute("UPDATE classes SET label = ?, updated = ? WHERE id = ? AND label IS NOT ?",
               (label, now, cid, label))
    return cid


def _add_sample(db: sqlite3.Connection, effect: dict,
                fetched: dict[str, tuple[bytes | None, np.ndarray | None]]) -> int:
    cid = ensure_class(db, effect["class"], effect["label"], relabel=False)
    row = db.execute("SELECT sample_id FROM fleet_sample WHERE uuid = ?",
                     (effect["sample"],)).fetchone()
    if row is not None:  # ours, or seen before: make sure it sits in the hub's class
        db.execute("UPDATE samples SET class_id = ? WHERE id = ? AND class_id != ?",
                   (cid, row[0], cid))
        return 0
    crop, vector = fetched.get(effect["sample"], (None, None))
    if vector is None:
        return 1
    vec = np.asarray(vector, "<f4")
    if vector_digest_column(db):
        cur = db.execute("INSERT INTO samples(class_id, embedding, crop, source, created, "
                         "vector_digest) VALUES (?, ?, ?, ?, ?, ?)",
                         (cid, vec.tobytes(), crop, "hub", time.time(), vector_digest(vec)))
    else:
        cur = db.execute("INSERT INTO samples(class_id, embedding, crop, source, created) "
                         "VALUES (?, ?, ?, ?, ?)", (cid, vec.tobytes(), crop, "hub", time.time()))
    db.execute("INSERT INTO fleet_sample(uuid, sample_id) VALUES (?, ?)",
               (effect["sample"], cur.lastrowid))
    return 0


def _delete_sample(db: sqlite3.Connection, sample_uuid: str) -> None:
    db.execute("DELETE FROM samples WHERE id = (SELECT sample_id FROM fleet_sample "
               "WHERE uuid = ?)", (sample_uuid,))
