"""Fan-out of kiosk events: to sinks (stdout as JSON lines) and to every live HTTP stream.

Publishing never blocks: sinks queue (see ``sinks.QueuedSink``) and subscriber queues drop
their oldest event when a reader falls behind, counting what it lost.
"""

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


def json_text(value) -> str:
    """``value`` as JSON; non-ASCII kept readable unless it cannot be encoded (a lone
    surrogate from an undecodable file name), then escaped so the output is always UTF-8."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True)
    return text


def json_lines(stream) -> Callable[[dict], None]:
    """A synchronous sink that writes each event as one JSON line and flushes.

    Only for streams that cannot block (files, tests); the kiosk writes stdout through
    ``sinks.QueuedSink`` instead, so a pipe nobody reads never stalls the loop.
    """
    lock = threading.Lock()

    def write(event: dict) -> None:
        with lock:
            stream.write(json_text(event) + "\n")
            stream.flush()
    return write


class Subscription:
    """One reader's bounded queue of events; ``lost`` counts events dropped for it."""

    def __init__(self, backlog: int) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=backlog)
        self.lost = 0

    def offer(self, event: dict) -> None:
        """Enqueue ``event``, dropping the oldest one when full (never blocks)."""
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.lost += 1
                except queue.Empty:
                    pass

    def get(self, timeout: float) -> dict | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class EventHub:
    """Publishes events to sinks and to subscriptions; remembers the last of each kind.

    A subscriber that does not keep up loses its oldest events, never blocks the loop.
    """

    def __init__(self, sinks: list[Callable[[dict], None]] | None = None,
                 backlog: int = 256) -> None:
        self.sinks = list(sinks or [])
        self.backlog = backlog
        self.last: dict[str, dict] = {}
        self._subscribers: list[Subscription] = []
        self._lock = threading.Lock()

    def publish(self, event: dict) -> dict:
        event = stamp(event)
        with self._lock:
            self.last[event["event"]] = event
            subscribers = list(self._subscribers)
        for sink in self.sinks:
            sink(event)
        for sub in subscribers:
            sub.offer(event)
        return event

    def subscribe(self) -> Subscription:
        sub = Subscription(self.backlog)
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def latest(self, kind: str) -> dict | None:
        with self._lock:
            return self.last.get(kind)

    def stats(self) -> dict:
        """Delivery counters for /status: events the sinks dropped, live subscribers."""
        with self._lock:
            subscribers = len(self._subscribers)
        return {"events_dropped": sum(getattr(s, "dropped", 0) for s in self.sinks),
                "stdout_closed": any(getattr(s, "broken", False) for s in self.sinks),
                "subscribers": subscribers}
