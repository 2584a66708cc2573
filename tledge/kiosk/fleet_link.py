"""The kiosk in a fleet: which model to open, sync state for /health, and following a
rollout while running.

The kiosk never imports the fleet: ``tledge kiosk --hub`` hands it a sync agent (anything
with ``start()``, ``stop()`` and ``status() -> dict``; see ``tledge.fleet.sync``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("tledge")
CHECK_EVERY_S = 2.0      # how often the loop looks for a rollout between frames


def fleet_model(gallery: Path, model: Path) -> Path:
    """The model to open for ``gallery``: ``model``, unless a fleet rollout switched the
    gallery to a model it stored in ``gallery/models`` (so a restart under systemd with the
    original ``--model`` follows the rollout instead of refusing the gallery)."""
    db_path = Path(gallery) / "gallery.sqlite"
    if not db_path.is_file():
        return model
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        finally:
            db.close()
        recorded = Path(json.loads(row[0]).get("path", "")) if row else None
    except (sqlite3.Error, ValueError, TypeError, AttributeError):
        return model  # the gallery's own open reports what is wrong with it
    stored = (Path(gallery) / "models").resolve()
    if recorded and recorded.is_file() and recorded.resolve().parent == stored \
            and recorded.resolve() != Path(model).resolve():
        log.info("the fleet rolled this gallery out to %s; opening it instead of %s",
                 recorded, model)
        return recorded
    return model


def sync_summary(sync) -> dict:
    """The few sync fields /health shows (the whole status is in /status)."""
    s = sync.status()
    return {k: s.get(k) for k in ("state", "lag", "pending", "last_sync", "last_error")}


def wait_for_model(sync, fingerprint: str, timeout: float = 5.0) -> Path | None:
    """The model file a fleet rollout switched the gallery to (``fingerprint``), waiting
    briefly for the agent to report it; None without a fleet or when it does not."""
    if sync is None:
        return None
    end = time.monotonic() + timeout
    while True:
        s = sync.status()
        if s.get("model_path") and s.get("fingerprint") == fingerprint:
            return Path(s["model_path"])
        if time.monotonic() > end:
            return None
        time.sleep(0.05)


class RolloutFollower:
    """Called between frames: when the agent switched the gallery to another model, open
    that model and gallery and hand them to the service (recognition pauses for the load)."""

    def __init__(self, sync) -> None:
        self.sync, self._next, self._seen = sync, 0.0, None

    def check(self, service) -> None:
        now = time.monotonic()
        if self.sync is None or now < self._next:
            return
        self._next = now + CHECK_EVERY_S
        status = self.sync.status()
        path = status.get("model_path")
        if not status.get("model_changed") or not path or path == self._seen:
            return
        self._seen = path
        service.switch_model(Path(path))
