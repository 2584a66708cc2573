"""The sync agent: pushes a device's outbox to the hub and replays the hub's change log.

It never blocks recognition: it runs on its own thread with its own SQLite and PostgreSQL
connections, every network call is bounded (connect and statement timeouts, keepalives), and
when the hub is down it reports ``offline`` and retries with back-off while the device keeps
recognising and enrolling locally (the outbox queues).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from tledge.errors import TledgeError
from tledge.fleet import FleetError
from tledge.fleet.dsn import connect, parse, redact
from tledge.fleet.exchange import pull_batch, push_outbox, report_device
from tledge.fleet.replica import Replica

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0
OUTBOX_CHECK_S = 0.2   # how soon a local enrollment is noticed and pushed


class SyncAgent:
    """Keeps the gallery at ``gallery_path`` in sync with the hub at ``hub_dsn``.

    ``embedder``: the device's model (embeds crops other devices enrolled when the hub has
    no embedding for its fingerprint yet). ``start()`` runs in a background thread;
    ``sync_once()`` runs one push + pull in the caller's thread.
    """

    def __init__(self, gallery_path, hub_dsn: str, embedder, device_name: str | None = None,
                 poll: float = 5.0, rollout: bool = True) -> None:
        parse(hub_dsn)  # refuse a password in the DSN before anything starts
        self.gallery_path, self.dsn, self.embedder = Path(gallery_path), hub_dsn, embedder
        self.poll, self.rollout_enabled = float(poll), rollout
        self.replica = Replica(self.gallery_path)
        self.device_name = device_name or f"device-{self.replica.device_id[:8]}"
        self._conn = None
        self._listen = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = {"state": "starting", "last_sync": None, "pending": self.replica.pending(),
                        "lag": None, "applied_seq": self.replica.applied_seq, "last_error": None,
                        "hub": redact(hub_dsn), "device_id": self.replica.device_id,
                        "device_name": self.device_name, "fingerprint": embedder.fingerprint,
                        "target_fingerprint": None, "model_changed": False, "model_path": None}

    # -- public API ------------------------------------------------------------------------
    def start(self) -> SyncAgent:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tledge-sync", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            self._close_hub()
            self.replica.close()

    def status(self) -> dict:
        """state (starting/connected/offline/error), last_sync (unix time), pending outbox
        rows, lag (hub head seq - applied seq), last_error, and model_changed/model_path
        once a rollout switched this gallery to another model (its owner should reopen it)."""
        return dict(self._status)

    def sync_once(self) -> dict:
        """Push the outbox, then pull and apply the log (and roll out a new target model);
        returns the counts. Raises FleetError when the hub cannot be reached."""
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                try:
                    return self._sync()
                except TledgeError as exc:
                    self._failed(exc)
                    raise
                except Exception as exc:  # psycopg's errors: the hub went away mid-sync
                    if not _is_db_error(exc):
                        raise
                    self._failed(exc)
                    if reused and attempt == 1:
                        continue  # a connection from before a hub restart: one fresh try
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    raise FleetError(f"hub {redact(self.dsn)} failed during sync: {first}") \
                        from exc
            raise AssertionError("unreachable")

    # -- one round -------------------------------------------------------------------------
    def _sync(self) -> dict:
        conn = self._hub()
        report_device(conn, self.replica, self.device_name, self.embedder.fingerprint)
        pushed = push_outbox(conn, self.replica)
        pulled = skipped = 0
        while True:
            n, s, more = pull_batch(conn, self.replica, self.embedder)
            pulled, skipped = pulled + n, skipped + s
            if not more:
                break
        rolled = self._maybe_rollout(conn)
        head = report_device(conn, self.replica, self.device_name, self.embedder.fingerprint)
        applied = self.replica.applied_seq
        self._status.update(state="connected", last_sync=time.time(), last_error=None,
                            pending=self.replica.pending(), applied_seq=applied,
                            lag=max(0, head - applied))
        return {"pushed": pushed, "pulled": pulled, "skipped": skipped, "rolled_out": rolled,
                "applied_seq": applied, "head_seq": head}

    def _maybe_rollout(self, conn) -> bool:
        if not self.rollout_enabled:
            return False
        from tledge.fleet.rollout import follow_target

        new = follow_target(conn, self.replica, self.embedder, self.device_name)
        self._status["target_fingerprint"] = self.embedder.fingerprint if new is None \
            else new.fingerprint
        if new is None:
            return False
        self.embedder = new
        self._status.update(model_changed=True, model_path=str(new.path),
                            fingerprint=new.fingerprint)
        return True

    def _hub(self):
        if self._conn is None or self._conn.closed:
            from tledge.fleet.hub import check_schema

            self._conn = connect(self.dsn)
            check_schema(self._conn)
            self._conn.commit()
        return self._conn

    def _failed(self, exc: BaseException) -> None:
        offline = isinstance(exc, FleetError) and "cannot reach" in str(exc) or _is_db_error(exc)
        self._status.update(state="offline" if offline else "error", last_error=str(exc),
                            pending=self.replica.pending())
        self._close_hub()

    def _close_hub(self) -> None:
        for conn in (self._conn, self._listen):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing a dead connection may fail; ignore
                    pass
        self._conn = self._listen = None

    # -- background thread -----------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listener()
                self.sync_once()
                backoff = 0.5
                self._wait()
            except TledgeError as exc:
                log.warning("sync with %s failed: %s", redact(self.dsn), exc)
                self._back_off(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    def _back_off(self, seconds: float) -> None:
        """Wait before reconnecting, keeping the pending count in status() current."""
        deadline = time.monotonic() + seconds
        while not self._stop.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            self._status["pending"] = self.replica.pending()
            if time.monotonic() >= deadline:
                return

    def _listener(self) -> None:
        if self._listen is None or self._listen.closed:
            self._listen = connect(self.dsn, autocommit=True)
            self._listen.execute("LISTEN tledge_changes")

    def _wait(self) -> None:
        """Until the hub notifies a change, a local change waits in the outbox, the poll
        interval passes, or stop() is called."""
        deadline = time.monotonic() + self.poll
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if list(self._listen.notifies(timeout=OUTBOX_CHECK_S, stop_after=1)):
                    return
            except Exception as exc:  # the listening connection died: reconnect via sync
                if not _is_db_error(exc):
                    raise
                self._failed(exc)
                raise FleetError(f"lost the hub's notifications: {exc}") from exc
            pending = self.replica.pending()
            self._status["pending"] = pending
            if pending:
                return


def _is_db_error(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(exc, (psycopg.Error, OSError))
