"""The kiosk's recognition loop: frames in, debounced events out, faults recovered.

One thread (the caller of ``run``) owns the model, the gallery and the camera. Other
threads (the HTTP server) talk to it only through ``submit`` (a job run between frames)
and the thread-safe ``status``/``health`` snapshots.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge.errors import SourceError, TledgeError
from tledge.kiosk.debounce import Debouncer
from tledge.kiosk.hub import EventHub
from tledge.kiosk.notify import sd_notify
from tledge.runtime.recognizer import Roi, crop_roi
from tledge.runtime.sources import CameraSource, open_source

log = logging.getLogger("tledge")


@dataclass(frozen=True)
class KioskConfig:
    model: Path
    gallery: Path
    source: str
    stable_frames: int = 5          # a label is reported after this many frames in a row
    threshold: float | None = None  # None: the gallery's own
    smoothing: int = 1
    roi: Roi | None = None
    max_frames: int | None = None
    exit_after: float | None = None  # seconds
    loop: bool = False               # restart video files and folders at their end
    every_frame: bool = False        # also publish a "frame" event for every frame
    retry_initial: float = 0.5       # seconds before the first reconnection attempt
    retry_max: float = 30.0
    stale_after: float = 10.0        # health fails when no frame came for this long
    providers: str = "auto"
    threads: int | None = None

    def validate(self) -> None:
        if self.stable_frames < 1:
            raise TledgeError(f"--stable must be at least 1 frame, got {self.stable_frames}")
        if self.max_frames is not None and self.max_frames < 1:
            raise TledgeError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.exit_after is not None and self.exit_after <= 0:
            raise TledgeError(f"--exit-after must be positive, got {self.exit_after}")
        if not 0 < self.retry_initial <= self.retry_max:
            raise TledgeError("retry delays must satisfy 0 < initial <= max")


class KioskService:
    def __init__(self, config: KioskConfig, hub: EventHub,
                 source_factory: Callable[..., object] = open_source) -> None:
        config.validate()
        self.config, self.hub, self.source_factory = config, hub, source_factory
        self.debouncer = Debouncer(config.stable_frames)
        self._stop = threading.Event()
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._state = {"state": "starting", "frames": 0, "started": time.time(),
                       "last_frame": None, "source_lost": 0, "fps": 0.0}
        self.stop_reason = ""
        self.exit_code = 0
        self.announce: dict = {}  # extra fields for the "started" event (e.g. the HTTP URL)

    # -- called from other threads ------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def submit(self, job: Callable[[KioskService, np.ndarray | None], object]) -> Future:
        """Run ``job(service, last_frame)`` on the loop thread; its result arrives in the Future."""
        future: Future = Future()
        if self._stop.is_set():
            future.set_exception(TledgeError("the kiosk is stopping"))
        else:
            self._jobs.put((job, future))
        return future

    def status(self) -> dict:
        with self._lock:
            state = dict(self._state)
        state["uptime_s"] = round(time.time() - state["started"], 1)
        state["last_frame_age_s"] = (round(time.time() - state["last_frame"], 2)
                                     if state["last_frame"] else None)
        return state

    def health(self) -> tuple[bool, dict]:
        """Healthy while running and a frame arrived within ``stale_after`` seconds."""
        s = self.status()
        age = s["last_frame_age_s"]
        ok = s["state"] == "running" and age is not None and age <= self.config.stale_after
        return ok, {"status": "ok" if ok else "unhealthy", "state": s["state"],
                    "last_frame_age_s": age, "frames": s["frames"]}

    def _set(self, **values) -> None:
        with self._lock:
            self._state.update(values)

    # -- the loop thread --------------------------------------------------------------------
    def run(self) -> int:
        """Open model and gallery, then recognise until stopped; returns the exit code."""
        from tledge.runtime import Embedder, Gallery, Recognizer

        c = self.config
        embedder = Embedder(c.model, providers=c.providers, threads=c.threads)
        embedder.warmup()
        with Gallery.open(c.gallery, embedder) as gallery:
            self.gallery = gallery
            self.recognizer = Recognizer(embedder, gallery, c.smoothing, c.threshold)
            info = gallery.info()
            self.hub.publish({"event": "started", "model": str(c.model),
                              "gallery": str(c.gallery), "classes": info["classes"],
                              "threshold": self.recognizer.threshold or info["threshold"],
                              "provider": embedder.provider, "source": str(c.source),
                              **self.announce})
            self._set(state="connecting")
            sd_notify("READY=1")
            try:
                self._loop()
            finally:
                self._set(state="stopped")
                sd_notify("STOPPING=1")
                self._fail_pending_jobs()
                status = self.status()
                self.hub.publish({"event": "stopped", "reason": self.stop_reason,
                                  "frames": status["frames"], "uptime_s": status["uptime_s"]})
        return self.exit_code

    def _loop(self) -> None:
        c = self.config
        self._t0 = time.monotonic()
        delay, lost_since = c.retry_initial, None
        last = None
        while not self._stop.is_set():
            try:
                source = self.source_factory(c.source, loop=c.loop)
            except SourceError as exc:
                lost_since = lost_since or time.time()
                self._lost(str(exc), delay)
                self._wait(delay, last)
                delay = min(delay * 2, c.retry_max)
                continue
            if lost_since is not None:
                self.hub.publish({"event": "source_restored", "source": str(c.source),
                                  "down_s": round(time.time() - lost_since, 2)})
                lost_since = None
            self.debouncer.reset()
            self.recognizer.reset()
            delay = c.retry_initial
            self._set(state="running")
            try:
                with source:
                    for frame in source:
                        last = frame.image
                        self._run_jobs(last)
                        if self._stop.is_set():
                            break
                        self._process(frame)
                        if self._limits_reached():
                            break
                if not self._stop.is_set():
                    if not isinstance(source, CameraSource) or not source.is_camera:
                        self.stop("end of source")
                    else:
                        raise SourceError(f"camera {c.source} stopped delivering frames")
            except SourceError as exc:
                lost_since = time.time()
                self._lost(str(exc), delay)
                self._wait(delay, last)
                delay = min(delay * 2, c.retry_max)

    def _lost(self, error: str, retry_in: float) -> None:
        with self._lock:
            self._state["source_lost"] += 1
            self._state["state"] = "source_lost"
        log.warning("%s; retrying in %.1f s", error, retry_in)
        self.hub.publish({"event": "source_lost", "error": error, "retry_in_s": retry_in})

    def _wait(self, seconds: float, last) -> None:
        """Sleep with back-off, still answering jobs and the watchdog."""
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            self._run_jobs(last)
            sd_notify("WATCHDOG=1")
            self._stop.wait(min(0.1, max(0.0, end - time.monotonic())))
            self._limits_reached()

    def _process(self, frame) -> None:
        result = self.recognizer.recognize(frame.image, self.config.roi)
        now = time.time()
        with self._lock:
            s = self._state
            if s["last_frame"]:
                gap = max(now - s["last_frame"], 1e-6)
                s["fps"] = round(0.9 * s["fps"] + 0.1 / gap if s["fps"] else 1 / gap, 2)
            s["frames"] += 1
            s["last_frame"] = now
        sd_notify("WATCHDOG=1")
        if self.config.every_frame:
            self.hub.publish({"event": "frame", "frame": frame.index, **result.to_dict()})
        stable = self.debouncer.push(result.label, result.score, result.latency_ms)
        if stable is not None:
            self.hub.publish({"event": "recognition", "label": stable.label,
                              "known": stable.label is not None, "score": round(stable.score, 4),
                              "candidate": result.candidate, "frame": frame.index,
                              "stable_frames": stable.frames,
                              "latency_ms": round(stable.latency_ms, 2)})

    def _limits_reached(self) -> bool:
        c = self.config
        if c.max_frames is not None and self.status()["frames"] >= c.max_frames:
            self.stop("max frames")
        if c.exit_after is not None and time.monotonic() - self._t0 >= c.exit_after:
            self.stop("exit-after")
        return self._stop.is_set()

    def _run_jobs(self, frame) -> None:
        while True:
            try:
                job, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job(self, frame))
            except Exception as exc:  # the job's error goes back to its caller, not the loop
                future.set_exception(exc)

    def _fail_pending_jobs(self) -> None:
        while True:
            try:
                _, future = self._jobs.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(TledgeError("the kiosk stopped before the request ran"))

    # -- jobs the HTTP API submits ------------------------------------------------------------
    def enroll_job(self, label: str, images: list[np.ndarray] | None):
        """A job: enroll ``images`` (RGB arrays) or, when None, the current camera frame."""
        def job(service: KioskService, frame) -> dict:
            shots = images
            if shots is None:
                if frame is None:
                    raise SourceError("no camera frame yet to enroll from")
                shots = [crop_roi(frame, service.config.roi)]
            result = service.gallery.enroll(label, shots)
            service.recognizer.reset()
            service.debouncer.reset()
            event = service.hub.publish({"event": "enrolled", "label": label,
                                         "added": result.added,
                                         "classes": len(service.gallery.labels())})
            return event
        return job
