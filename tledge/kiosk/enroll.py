"""Enrollment off the recognition loop: one worker thread, a bounded queue, remembered jobs.

Enrolling 2,400 images on the loop thread once stopped frames for 40 s, and a client that
timed out retried and duplicated them. Here a ``POST /enroll`` becomes an ``EnrollJob``
run by one dedicated thread while the loop keeps recognising (ONNX Runtime sessions are
safe to ``run`` from two threads; the gallery embeds outside its store lock). Jobs are
kept in a bounded LRU so a client that got ``202 Accepted`` can ask for the result, and an
``Idempotency-Key`` maps a retry to the job it repeats.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tledge.errors import TledgeError
from tledge.kiosk.enroll_images import RequestError

log = logging.getLogger("tledge")


@dataclass(eq=False)
class EnrollJob:
    """One enrollment: ``images`` (base64 texts) or ``frame`` (a copy of the current frame)."""

    label: str
    images: list[str] | None = None
    frame: np.ndarray | None = None
    key: str | None = None          # the client's Idempotency-Key
    digest: str = ""                # of the request body, to refuse a reused key
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: str = "queued"           # queued -> running -> done | failed
    status: int = 202               # the HTTP status of the final answer
    result: dict | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def finish(self, status: int, result: dict | None = None, error: str | None = None) -> None:
        self.status, self.result, self.error = status, result, error
        self.state = "done" if error is None else "failed"
        self.images = self.frame = None  # the pixels are stored or refused: free them
        self.finished.set()

    def document(self) -> dict:
        """What the client sees: the job's state and, once finished, its result or error."""
        doc = {"job": self.id, "state": self.state, "label": self.label}
        if self.result is not None:
            doc.update(self.result)
        if self.error is not None:
            doc["error"] = self.error
        if not self.finished.is_set():
            doc["location"] = f"/enroll/{self.id}"
        return doc


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]


class EnrollWorker:
    """Runs jobs with ``runner(job) -> result dict`` on one thread, in order.

    ``queue_size`` jobs may wait (beyond: ``submit`` raises a 429 RequestError);
    ``keep`` finished jobs are remembered for ``GET /enroll/<id>`` and retries.
    """

    def __init__(self, runner: Callable[[EnrollJob], dict], queue_size: int = 4,
                 keep: int = 64) -> None:
        self.runner, self.keep = runner, keep
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._jobs: OrderedDict[str, EnrollJob] = OrderedDict()
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: EnrollJob | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kiosk-enroll", daemon=True)
        self._thread.start()

    def submit(self, job: EnrollJob) -> EnrollJob:
        """Queue ``job``; a retry with a known Idempotency-Key returns the earlier job."""
        with self._lock:
            if self._stop.is_set():
                raise RequestError(503, "the kiosk is stopping; enroll again after it restarts")
            earlier = self._jobs.get(self._keys.get(job.key, "")) if job.key else None
            if earlier is not None:
                if earlier.digest != job.digest:
                    raise RequestError(422, "this Idempotency-Key was used for another request "
                                            "body; use a new key for a new enrollment")
                self._jobs.move_to_end(earlier.id)
                return earlier
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise RequestError(429, f"{self._queue.maxsize} enrollments are already "
                                        "waiting; retry in a few seconds") from None
            self._remember(job)
        return job

    def get(self, job_id: str) -> EnrollJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def pending(self) -> int:
        return self._queue.qsize() + (self.current is not None)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel the running job between images, fail the waiting ones, end the thread."""
        with self._lock:
            self._stop.set()
            if self.current is not None:
                self.current.cancelled.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            job.finish(503, error="the kiosk stopped before this enrollment ran; retry later")

    def _remember(self, job: EnrollJob) -> None:
        self._jobs[job.id] = job
        if job.key:
            self._keys[job.key] = job.id
        while len(self._jobs) > self.keep:
            oldest = next(j for j in self._jobs.values() if j.finished.is_set() or j is job)
            if oldest is job:
                break  # every remembered job is still pending: keep them (the queue bounds it)
            del self._jobs[oldest.id]
            if oldest.key and self._keys.get(oldest.key) == oldest.id:
                del self._keys[oldest.key]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._lock:
                self.current, job.state = job, "running"
            try:
                self._execute(job)
            finally:
                self.current = None

    def _execute(self, job: EnrollJob) -> None:
        try:
            job.finish(200, self.runner(job))
        except RequestError as exc:
            job.finish(exc.status, error=str(exc))
        except TledgeError as exc:  # a bad request, unless the gallery's disk is full
            full = "disk is full" in str(exc)
            job.finish(507 if full else 422, error=one_line(exc))
        except OSError as exc:  # a full disk, an I/O error: the server's fault, said in one line
            log.error("enrollment of %r failed", job.label, exc_info=True)
            full = exc.errno == errno.ENOSPC
            job.finish(507 if full else 500, error=f"cannot store the enrollment: {one_line(exc)}")
        except Exception as exc:  # noqa: BLE001 (any bug: the client gets one line, the log the rest)
            log.error("enrollment of %r failed", job.label, exc_info=True)
            job.finish(500, error=f"enrollment failed: {type(exc).__name__}: {one_line(exc)}")
