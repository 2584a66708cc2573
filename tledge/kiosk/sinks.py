"""The stdout event sink: a bounded queue drained by a writer thread.

Writing a pipe blocks once the reader stops reading (~64 KB on Linux). Done on the loop
thread, that froze recognition, the watchdog and ``--exit-after``; a reader that went away
killed the kiosk with BrokenPipeError. Here the loop only enqueues: when the queue is full
the event is dropped and counted, and the writer reports the count (an ``events_dropped``
line) once it catches up. A closed stdout ends stdout output with one log line.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading

from tledge.kiosk.hub import json_text, stamp

log = logging.getLogger("tledge")
_STOP = object()


def _raw_writer(stream):
    """A function writing bytes to ``stream``: straight to its file descriptor when it has
    one, so a writer blocked on a full pipe holds no lock that interpreter exit needs."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    if fd is None:
        def write_text(data: bytes) -> None:
            stream.write(data.decode("utf-8"))
            stream.flush()
        return write_text

    def write_fd(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return write_fd


class QueuedSink:
    """Event sink for the hub: ``sink(event)`` never blocks; a thread writes JSON lines.

    ``dropped`` counts events lost to a full queue; ``broken`` is set once the stream was
    closed by its reader (nothing more is written there).
    """

    def __init__(self, stream, capacity: int = 1024) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._write = _raw_writer(stream)
        self._lock = threading.Lock()
        self.dropped = 0
        self._unreported = 0
        self.broken = False
        self._thread = threading.Thread(target=self._run, name="kiosk-stdout", daemon=True)
        self._thread.start()

    def __call__(self, event: dict) -> None:
        if self.broken:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                self._unreported += 1

    def close(self, timeout: float = 2.0) -> None:
        """Let the writer drain what is queued for up to ``timeout`` seconds, then stop."""
        if self.broken:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return  # the reader is stuck; the daemon writer is abandoned at exit
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is _STOP:
                return
            try:
                self._write((json_text(event) + "\n").encode("utf-8"))
                self._report_drops()
            except OSError as exc:  # EPIPE, or the stream otherwise unusable
                self.broken = True
                log.warning("stdout is closed (%s): events are no longer written there; "
                            "the kiosk keeps running (use /events)", exc.strerror or exc)
                return

    def _report_drops(self) -> None:
        """Once caught up, say how many events were lost since the last report."""
        if not self._queue.empty():
            return
        with self._lock:
            count, self._unreported = self._unreported, 0
            total = self.dropped
        if count:
            line = json_text(stamp({"event": "events_dropped", "count": count,
                                    "total": total, "reason": "stdout was not read in time"}))
            self._write((line + "\n").encode("utf-8"))
