"""``GET /events``: server-sent events, with a bounded number of concurrent streams.

Each stream holds one of ``limit`` slots (and one server thread) while it lasts. A stream
ends when the kiosk stops, when the server closes, or when its reader fell so far behind
that the hub dropped events for it; a reader that stops reading altogether is
disconnected by the server (see ``server._Server.maintenance``). The recognition loop
never waits for a stream: the hub only offers events to a bounded queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from tledge.kiosk.hub import EventHub, Subscription, json_text

POLL_S = 0.5  # how often a quiet stream checks whether the server is closing


class EventStreams:
    """Hands out at most ``limit`` streams of ``hub``'s events."""

    def __init__(self, hub: EventHub, limit: int, keepalive: float) -> None:
        self.hub, self.keepalive = hub, keepalive
        self._slots = threading.BoundedSemaphore(limit)
        self.closing = threading.Event()

    def open(self) -> EventStream | None:
        """A new stream, or None when every slot is taken."""
        if self.closing.is_set() or not self._slots.acquire(blocking=False):
            return None
        return EventStream(self, self.hub.subscribe())

    def release(self, sub: Subscription) -> None:
        self.hub.unsubscribe(sub)
        self._slots.release()


class EventStream:
    """A WSGI response body: an SSE comment, then one ``event:/data:`` block per event."""

    def __init__(self, owner: EventStreams, sub: Subscription) -> None:
        self.owner, self.sub = owner, sub
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b": tledge kiosk events\n\n"
        quiet_since = time.monotonic()
        while not self.owner.closing.is_set():
            event = self.sub.get(POLL_S)
            if self.sub.lost:
                yield f": {self.sub.lost} events dropped: reader too slow\n\n".encode()
                return
            if event is None:
                if time.monotonic() - quiet_since >= self.owner.keepalive:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"
                continue
            quiet_since = time.monotonic()
            yield f"event: {event['event']}\ndata: {json_text(event)}\n\n".encode()
            if event["event"] == "stopped":
                return

    def close(self) -> None:
        """Called by the server when the response ends, however it ends."""
        if not self._closed:
            self._closed = True
            self.owner.release(self.sub)
