"""Fan-out of kiosk events: to stdout as JSON lines, and to every live HTTP stream."""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading
import time
from collections.abc import Callable


def stamp(event: dict) -> dict:
    """Add ``timestamp`` (ISO 8601, UTC) and ``time`` (Unix seconds) to ``event``."""
    now = time.time()
    iso = dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="milliseconds")
    return {"event": event["event"], "timestamp": iso.replace("+00:00", "Z"),
            "time": round(now, 3), **{k: v for k, v in event.items() if k != "event"}}


def json_lines(stream) -> Callable[[dict], None]:
    """A sink that writes each event as one JSON line and flushes (for pipes)."""
    lock = threading.Lock()

    def write(event: dict) -> None:
        with lock:
            stream.write(json.dumps(event, ensure_ascii=False) + "\n")
            stream.flush()
    return write


class EventHub:
    """Publishes events to sinks and to subscriber queues; remembers the last of each kind.

    A subscriber that does not keep up loses its oldest events, never blocks the loop.
    """

    def __init__(self, sinks: list[Callable[[dict], None]] | None = None,
                 backlog: int = 256) -> None:
        self.sinks = list(sinks or [])
        self.backlog = backlog
        self.last: dict[str, dict] = {}
        self._subscribers: list[queue.Queue] = []
        self._lock = threading.Lock()

    def publish(self, event: dict) -> dict:
        event = stamp(event)
        with self._lock:
            self.last[event["event"]] = event
            subscribers = list(self._subscribers)
        for sink in self.sinks:
            sink(event)
        for q in subscribers:
            while True:
                try:
                    q.put_nowait(event)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass
        return event

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=self.backlog)
        with self._lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    def latest(self, kind: str) -> dict | None:
        with self._lock:
            return self.last.get(kind)
