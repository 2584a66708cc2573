"""Capture and recognition off the UI thread.

``RecognitionWorker`` lives in a QThread: it reads frames, recognises them and emits the
results; it runs submitted jobs (enrollment, gallery edits) between frames, so the UI thread
never waits on inference. It stops cooperatively (``stop()``), never by ``terminate()``.

The UI thread hands over a new recognizer (or None) at any moment: the worker reads it once
per frame, under a lock, into a local, so a swap never lands between a check and a use. A
failure in one frame (any exception) is reported and the next frame goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot

from tledge.errors import TledgeError
from tledge.runtime import Recognizer, open_source
from tledge.runtime.sources import CameraSource
from tledge_gui.signals import emit

log = logging.getLogger("tledge.gui")


class RecognitionWorker(QObject):
    frame = Signal(object, object, float)      # RGB array, Recognition | None, fps
    status = Signal(str)                       # human-readable state ("camera lost, ...")
    error = Signal(str)
    job_done = Signal(object, object)          # (tag, result or exception)
    finished = Signal()

    def __init__(self, source: str, folder_interval: float = 0.8, max_backoff: float = 8.0):
        super().__init__()
        self.source_spec = source
        self.folder_interval, self.max_backoff = folder_interval, max_backoff
        self._recognizer: Recognizer | None = None
        self._reset = threading.Event()
        self.roi: tuple[int, int, int, int] | None = None
        self._stop = threading.Event()
        self._reopen = threading.Event()
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._last: np.ndarray | None = None

    # -- called from the UI thread -----------------------------------------------------------
    @property
    def recognizer(self) -> Recognizer | None:
        with self._lock:
            return self._recognizer

    @recognizer.setter
    def recognizer(self, recognizer: Recognizer | None) -> None:
        """Used from the next frame on; the frame in progress finishes with the old one."""
        with self._lock:
            self._recognizer = recognizer

    def reset_smoothing(self) -> None:
        """Forget the smoothing history before the next frame (in the worker's thread: the
        history is touched only there)."""
        self._reset.set()

    def stop(self) -> None:
        self._stop.set()

    def submit(self, tag: object, job: Callable[[], object]) -> None:
        """Run ``job`` in the worker thread; ``job_done(tag, result)`` reports back."""
        self._jobs.put((tag, job))

    def last_frame(self) -> np.ndarray | None:
        with self._lock:
            return None if self._last is None else self._last.copy()

    def set_source(self, source: str) -> None:
        """Switch to another source at the next frame."""
        self.source_spec = source
        self._reopen.set()

    # -- the thread's loop ---------------------------------------------------------------------
    @Slot()
    def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._reopen.clear()
            try:
                self._play(open_source(self.source_spec, loop=True))
                backoff = 0.5
            except Exception as exc:  # a source that fails in any way is retried, not fatal
                if self._stop.is_set():
                    break
                if not isinstance(exc, TledgeError):
                    log.warning("frame source failed", exc_info=exc)
                emit(self.status, f"{one_line(exc)} — retrying in {backoff:.0f} s")
                self._wait(backoff)
                backoff = min(self.max_backoff, backoff * 2)
        emit(self.finished)

    def _play(self, source) -> None:
        is_video = isinstance(source, CameraSource) and not source.is_camera
        interval = 1.0 / max(1.0, source.cap.get(5) or 30.0) if is_video else 0.0
        if not isinstance(source, CameraSource):
            interval = self.folder_interval
        emit(self.status, f"playing {source.description}")
        times: list[float] = []
        with source:
            for frame in source:
                start = time.perf_counter()
                self._run_jobs()
                if self._reopen.is_set() or self._stop.is_set():
                    self._reopen.clear()
                    return
                with self._lock:
                    self._last = frame.image
                    recognizer = self._recognizer  # one read: the UI may swap it at any time
                result = self._recognize(recognizer, frame.image)
                times = (times + [time.perf_counter()])[-30:]
                fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
                emit(self.frame, frame.image, result, fps)
                self._wait(interval - (time.perf_counter() - start))

    def _recognize(self, recognizer: Recognizer | None, image: np.ndarray):
        """One frame's Recognition, or None without a recognizer or when it failed (the
        failure is reported; one bad frame never ends the loop)."""
        if recognizer is None:
            return None
        if self._reset.is_set():
            self._reset.clear()
            recognizer.reset()
        try:
            return recognizer.recognize(image, self.roi)
        except Exception as exc:  # reported to the UI, and the next frame goes on
            if not isinstance(exc, TledgeError):
                log.warning("recognition failed on one frame", exc_info=exc)
            emit(self.error, one_line(exc))
            return None

    def _run_jobs(self) -> None:
        while True:
            try:
                tag, job = self._jobs.get_nowait()
            except queue.Empty:
                return
            try:
                result = job()
            except Exception as exc:  # reported to the UI, never lost in the thread
                result = exc
            emit(self.job_done, tag, result)

    def _wait(self, seconds: float) -> None:
        end = time.perf_counter() + max(0.0, seconds)
        while not (self._stop.is_set() or self._reopen.is_set()) and time.perf_counter() < end:
            self._run_jobs()
            time.sleep(min(0.02, max(0.0, end - time.perf_counter())))


def one_line(exc: Exception) -> str:
    """One line: a tledge error's own message, anything else with its type."""
    return str(exc) if isinstance(exc, TledgeError) else f"{type(exc).__name__}: {exc}"
