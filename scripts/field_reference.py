"""The field test's judge: re-derive each checked frame's answer without any cache.

A frame event carries the kiosk's frame index, time, candidate class and score. The
reference decodes the same video frame, embeds it again, and matches it by numpy against
the class prototypes of the samples the database held at that moment (samples carry their
commit time; a frame within a second of a commit may have seen either side of it). A frame
is wrong when no state in that window gives the kiosk's candidate and score.
"""

from __future__ import annotations

import random
import sqlite3

import numpy as np

TOLERANCE = 2e-3      # cosine: other ORT thread counts and fast resampling round differently
WINDOW_S = 1.5


def _samples(gallery) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(created times (n,), class index (n,), labels, dim) and the vectors, from SQLite."""
    db = sqlite3.connect(f"file:{gallery / 'gallery.sqlite'}?mode=ro", uri=True)
    dim = int(db.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()[0])
    rows = db.execute("SELECT s.created, c.label, s.embedding FROM samples s "
                      "JOIN classes c ON c.id = s.class_id ORDER BY s.created").fetchall()
    db.close()
    labels = sorted({r[1] for r in rows})
    created = np.array([r[0] for r in rows])
    cls = np.array([labels.index(r[1]) for r in rows])
    vecs = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(len(rows), dim)
    return created, cls, labels, vecs


def _prototypes(cls: np.ndarray, vecs: np.ndarray, upto: int, n_labels: int):
    sums = np.zeros((n_labels, vecs.shape[1]))
    np.add.at(sums, cls[:upto], vecs[:upto])
    present = np.flatnonzero(np.abs(sums).sum(axis=1) > 0)
    protos = sums[present] / np.linalg.norm(sums[present], axis=1, keepdims=True)
    return present, protos.astype(np.float32)


def _frames(video, wanted: set[int]) -> dict[int, np.ndarray]:
    """The video's frames by index modulo its length, only those asked for."""
    from tledge.runtime.sources import open_source

    with open_source(str(video)) as src:
        everything = [(f.index, f.image if f.index in wanted else None) for f in src]
    return {i: im for i, im in everything if im is not None}, len(everything)


def check_frames(run, limit: int) -> dict:
    from tledge.runtime import Embedder

    events = [e for e in run.frames if e.get("candidate") is not None]
    random.Random(run.seed).shuffle(events)
    events = events[:limit]
    created, cls, labels, vecs = _samples(run.gallery)
    _, length = _frames(run.video, set())
    images, _ = _frames(run.video, {e["frame"] % length for e in events})
    embedder = Embedder(run.model, providers="cpu")
    wrong, examples = 0, []
    for event in events:
        vector = embedder.embed([images[event["frame"] % length]], fast_resize=True)[0]
        t = event["time"]
        cutoffs = {int(np.searchsorted(created, c, side="right"))
                   for c in (t - WINDOW_S, t, *created[(created > t - WINDOW_S) & (created <= t)])}
        if not any(_matches(event, vector, cls, vecs, labels, k) for k in cutoffs):
            wrong += 1
            examples.append((event["frame"], event["candidate"], event["score"]))
    return {"frames_checked": len(events), "wrong_labels": wrong, "wrong_examples": examples[:5]}


def _matches(event: dict, vector: np.ndarray, cls, vecs, labels, upto: int) -> bool:
    present, protos = _prototypes(cls, vecs, upto, len(labels))
    if not len(present):
        return False
    sims = protos @ vector
    names = [labels[i] for i in present]
    if event["candidate"] not in names:
        return False
    mine = float(sims[names.index(event["candidate"])])
    return abs(mine - event["score"]) <= TOLERANCE and mine >= sims.max() - TOLERANCE


def format_report(s: dict) -> str:
    lines = ["", "field test", "----------",
             f"requests tried:        {s['requests']}",
             f"answered with a status: {s['answered']}",
             f"  while the kiosk ran:  {s['running_answered']} of {s['running_requests']} "
             "(the rest came while it restarted after a SIGTERM)",
             "answers per status:"]
    lines += [f"  {k:62} {v}" for k, v in s["statuses"].items()]
    lines += [f"events on stdout:      {s['events']}",
              f"kiosk crashes:         {s['crashes']}",
              f"frames checked:        {s['frames_checked']} of {s['frames']} frame events",
              f"wrong labels:          {s['wrong_labels']} {s['wrong_examples'] or ''}",
              f"kiosk peak memory:     {s['peak_rss_mb']:.0f} MB (VmHWM)"]
    lines += [f"{k}: {v}" for k, v in sorted(s["other"].items())]
    return "\n".join(lines)
