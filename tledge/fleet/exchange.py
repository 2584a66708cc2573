"""What travels between a replica and the hub: pushes, pulls, embeddings, the device row."""

from __future__ import annotations

import json
import logging

import numpy as np

from tledge.fleet import FleetError
from tledge.fleet.replica import Replica

log = logging.getLogger(__name__)

PUSH_BATCH = 100   # outbox rows per hub transaction
PULL_BATCH = 500   # log entries per SQLite transaction


def push_outbox(conn, replica: Replica) -> int:
    """Push the outbox in order, one hub transaction per batch; rows are dropped locally only
    after the hub committed them (a crash in between re-sends them; the hub's change_id
    makes that a no-op). Returns the number pushed."""
    pushed = 0
    device = replica.device_id
    while rows := replica.outbox(PUSH_BATCH):
        with conn.transaction():
            for row in rows:
                conn.execute("SELECT tledge_push(%s, %s, %s, %s, %s, %s, %s, %s)",
                             (row.change_id, device, row.base_seq, row.kind,
                              json.dumps(row.payload()), row.crop, row.fingerprint, row.vector))
        replica.drop_outbox(rows[-1].id)
        pushed += len(rows)
    return pushed


def report_device(conn, replica: Replica, name: str, fingerprint: str) -> int:
    """Register or update this device's row (model, progress, last seen); returns the
    hub's head seq."""
    with conn.transaction():
        conn.execute("SELECT tledge_device_seen(%s, %s, %s, %s, %s)",
                     (replica.device_id, name, fingerprint, replica.applied_seq,
                      replica.pending()))
        return conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]


def pull_batch(conn, replica: Replica, embedder) -> tuple[int, int, bool]:
    """Apply the next batch of the log; returns (entries applied, samples skipped, more)."""
    if embedder.fingerprint != replica.fingerprint():
        raise FleetError(f"the gallery is bound to model {replica.fingerprint()[:12]} but the "
                         f"sync runs {embedder.fingerprint[:12]}; a gallery never mixes models: "
                         "sync with the gallery's model (see gallery/models/)")
    with conn.transaction():
        rows = conn.execute("SELECT seq, payload->'effects' FROM changes WHERE seq > %s "
                            "ORDER BY seq LIMIT %s", (replica.applied_seq, PULL_BATCH)).fetchall()
    if not rows:
        return 0, 0, False
    effects = [effect for _, batch in rows for effect in batch]
    new = [e["sample"] for e in effects if e["op"] == "add"]
    new = [u for u in new if u not in replica.has_samples(new)]
    fetched = sample_vectors(conn, replica, new, embedder)
    skipped = replica.apply(effects, rows[-1][0], fetched)
    if skipped:
        log.warning("%d samples from the hub had neither a crop nor an embedding for this "
                    "model; they are not in this device's gallery", skipped)
    return len(rows), skipped, len(rows) == PULL_BATCH


def sample_vectors(conn, replica: Replica, uuids: list[str],
                   embedder) -> dict[str, tuple[bytes | None, np.ndarray | None]]:
    """Crop and embedding (for the embedder's fingerprint) of each sample: the hub's copy when
    a device already computed it, else computed here from the crop and uploaded."""
    if not uuids:
        return {}
    fingerprint = embedder.fingerprint
    with conn.transaction():
        rows = conn.execute(
            "SELECT s.uuid::text, s.crop, e.vector FROM samples s LEFT JOIN embeddings e "
            "ON e.sample_uuid = s.uuid AND e.fingerprint = %s WHERE s.uuid = ANY(%s::uuid[])",
            (fingerprint, uuids)).fetchall()
    out: dict[str, tuple[bytes | None, np.ndarray | None]] = {}
    missing = []
    for su, crop, vec in rows:
        crop = bytes(crop) if crop is not None else None
        out[su] = (crop, np.frombuffer(vec, np.float32).copy() if vec is not None else None)
        if vec is None and crop is not None:
            missing.append(su)
    if missing:
        vectors = embed_crops(embedder, [out[u][0] for u in missing])
        with conn.transaction():
            for su, vec in zip(missing, vectors):
                out[su] = (out[su][0], vec)
                conn.execute("SELECT tledge_put_embedding(%s, %s, %s, %s)",
                             (su, fingerprint, vec.astype(np.float32).tobytes(),
                              replica.device_id))
    return out


def embed_crops(embedder, crops: list[bytes]) -> np.ndarray:
    """(n, dim) embeddings of stored JPEG crops."""
    from tledge.runtime.images import decode_image

    images = [decode_image(crop, f"hub sample {i}") for i, crop in enumerate(crops)]
    return embedder.embed(images)
