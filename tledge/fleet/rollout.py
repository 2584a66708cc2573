"""A device follows the fleet's target model: fetch it, re-embed, switch in one transaction.

Embeddings another device already computed for the target fingerprint are fetched from the
hub; the rest are computed here from the stored crops and uploaded for the others. The
gallery switches model in ONE SQLite transaction that rewrites every embedding and the
model record together, so it never holds a mix of fingerprints.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from tledge.fleet import FleetError
from tledge.fleet.exchange import sample_vectors
from tledge.fleet.replica import Replica, tx_db, vector_digest, vector_digest_column

log = logging.getLogger(__name__)

MODELS_DIR = "models"   # inside the gallery folder: models fetched from the hub


def target(conn) -> str | None:
    with conn.transaction():
        row = conn.execute("SELECT value FROM settings WHERE key = 'target_fingerprint'"
                           ).fetchone()
    return row[0] if row else None


def follow_target(conn, replica: Replica, embedder, device_name: str):
    """Switch the gallery to the hub's target model when it differs from ``embedder``'s;
    returns the new Embedder, or None when nothing changed."""
    wanted = target(conn)
    if wanted is None or wanted == replica.fingerprint():
        return None
    log.info("%s: rolling out model %s", device_name, wanted[:12])
    new = load_target(conn, replica.store.path.parent, wanted, embedder)
    switch(conn, replica, new)
    return new


def load_target(conn, gallery: Path, fingerprint: str, embedder):
    """The target model as an Embedder, downloaded into ``gallery/models`` if needed; the
    Embedder verifies the file's fingerprint, and it must be the one the hub asked for."""
    path = gallery / MODELS_DIR / f"{fingerprint[:24]}.onnx"
    if not path.is_file():
        with conn.transaction():
            row = conn.execute("SELECT data FROM models WHERE fingerprint = %s",
                               (fingerprint,)).fetchone()
        if row is None:
            raise FleetError(f"the hub's target model {fingerprint[:12]} is not stored in the "
                             "hub; run `tledge hub rollout --url URL --model FILE` again")
        _write_atomic(path, bytes(row[0]))
    provider = getattr(embedder, "provider", None)
    new = type(embedder)(path, providers=[provider] if provider else "cpu")
    if new.fingerprint != fingerprint:
        raise FleetError(f"model {path} has fingerprint {new.fingerprint[:12]}, the hub asked "
                         f"for {fingerprint[:12]}; delete the file and sync again")
    return new


def switch(conn, replica: Replica, embedder) -> int:
    """Re-embed every sample for ``embedder`` and switch the gallery; returns the count."""
    for _ in range(5):  # samples enrolled meanwhile make us go round again
        rows = replica.samples()
        vectors = _vectors_for(conn, replica, rows, embedder)
        if _commit_switch(replica, rows, vectors, embedder):
            return len(rows)
    raise FleetError("the gallery kept changing during the model switch; sync again")


def _vectors_for(conn, replica: Replica, rows, embedder) -> np.ndarray:
    fetched = sample_vectors(conn, replica, [u for _, u, _ in rows], embedder)
    local = [(i, crop) for i, (_, u, crop) in enumerate(rows)
             if fetched.get(u, (None, None))[1] is None]
    if any(crop is None for _, crop in local):
        raise FleetError("some samples have no stored crop; they cannot be re-embedded for "
                         "the new model")
    out = np.zeros((len(rows), embedder.dim), np.float32)
    for i, (_, u, _) in enumerate(rows):
        vec = fetched.get(u, (None, None))[1]
        if vec is not None:
            out[i] = vec
    if local:
        from tledge.fleet.exchange import embed_crops

        out[[i for i, _ in local]] = embed_crops(embedder, [c for _, c in local])
    return out


def _commit_switch(replica: Replica, rows, vectors: np.ndarray, embedder) -> bool:
    """One transaction: the same samples still there -> all embeddings and the model record
    replaced together. False (nothing written) when the gallery changed meanwhile."""
    ids = [sid for sid, _, _ in rows]
    with replica.store.transaction() as change:
        db = tx_db(change)
        now = [r[0] for r in db.execute("SELECT id FROM samples ORDER BY id")]
        if now != ids:
            return False
        vectors = np.asarray(vectors, "<f4")
        if vector_digest_column(db):
            db.executemany("UPDATE samples SET embedding = ?, vector_digest = ? WHERE id = ?",
                           [(v.tobytes(), vector_digest(v), i) for i, v in zip(ids, vectors)])
        else:
            db.executemany("UPDATE samples SET embedding = ? WHERE id = ?",
                           [(v.tobytes(), i) for i, v in zip(ids, vectors)])
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", model_meta(embedder).items())
    return True


def model_meta(embedder) -> dict[str, str]:
    """The gallery's record of its model (the same keys ``Gallery.create`` writes)."""
    info = embedder.info
    model = {"backbone": info.backbone, "precision": info.precision,
             "path": str(embedder.path), "created": info.created}
    return {"fingerprint": info.fingerprint, "dim": str(info.embedding_dim),
            "model": json.dumps(model)}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
