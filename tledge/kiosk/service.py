"""The kiosk's recognition loop: frames in, debounced events out, faults recovered.

One thread (the caller of ``run``) owns the camera and recognises. Enrollment runs on its
own worker thread (``enroll.EnrollWorker``) against the same model and gallery, so it never
stalls frames. Other threads (the HTTP server) talk to the loop only through ``submit`` (a
job run between frames), ``current_frame`` and the thread-safe ``status``/``health``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from tledge.errors import ImageError, SourceError, TledgeError
from tledge.kiosk.config import KioskConfig
from tledge.kiosk.debounce import Debouncer
from tledge.kiosk.enroll import EnrollJob, EnrollWorker
from tledge.kiosk.enroll_images import LazyImages, screen
from tledge.kiosk.fleet_link import RolloutFollower, sync_summary, wait_for_model
from tledge.kiosk.hub import EventHub
from tledge.kiosk.notify import sd_notify
from tledge.runtime.gallery import ModelChangedError
from tledge.runtime.recognizer import crop_roi
from tledge.runtime.sources import CameraSource, open_source

log = logging.getLogger("tledge")
__all__ = ["KioskConfig", "KioskService"]


class KioskService:
    def __init__(self, config: KioskConfig, hub: EventHub,
                 source_factory: Callable[..., object] = open_source) -> None:
        config.validate()
        self.config, self.hub, self.source_factory = config, hub, source_factory
        self.debouncer = Debouncer(config.stable_frames)
        self._stop = threading.Event()
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._frame: np.ndarray | None = None  # the latest frame (the loop never mutates it)
        self.enrollment = EnrollWorker(self._enroll, config.enroll_queue)
        self._state = {"state": "starting", "frames": 0, "started": time.time(),
                       "last_frame": None, "source_lost": 0, "fps": 0.0}
        self.stop_reason = ""
        self.exit_code = 0
        self.announce: dict = {}  # extra fields for the "started" event (e.g. the HTTP URL)
        self.sync = None           # a fleet sync agent (tledge kiosk --hub), if any
        self._follower = RolloutFollower(None)

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

    def current_frame(self) -> np.ndarray | None:
        """A copy of the latest frame's region of interest (None before the first frame);
        copied now, so an enrollment stores the frame of the moment it was asked for."""
        with self._lock:
            frame = self._frame
        return None if frame is None else crop_roi(frame, self.config.roi).copy()

    def status(self) -> dict:
        with self._lock:
            state = dict(self._state)
        state.update(self.hub.stats(), enroll_pending=self.enrollment.pending())
        if self.sync is not None:
            state["sync"] = self.sync.status()
        state["uptime_s"] = round(time.time() - state["started"], 1)
        state["last_frame_age_s"] = (round(time.time() - state["last_frame"], 2)
                                     if state["last_frame"] else None)
        return state

    def health(self) -> tuple[bool, dict]:
        """Healthy while running and a frame arrived within ``stale_after`` seconds."""
        s = self.status()
        age = s["last_frame_age_s"]
        ok = s["state"] == "running" and age is not None and age <= self.config.stale_after
        body = {"status": "ok" if ok else "unhealthy", "state": s["state"],
                "last_frame_age_s": age, "frames": s["frames"]}
        if self.sync is not None:  # a hub outage is reported, never a reason to restart
            body["sync"] = sync_summary(self.sync)
        return ok, body

    def _set(self, **values) -> None:
        with self._lock:
            self._state.update(values)

    # -- the loop thread --------------------------------------------------------------------
    def run(self) -> int:
        """Open model and gallery, then recognise until stopped; returns the exit code."""
        from tledge.runtime import Embedder, Gallery, Recognizer

        c = self.config
        # With --hub the sync agent's model is the same file: share its session (ONNX Runtime
        # sessions are thread-safe) instead of loading the model twice.
        shared = getattr(self.sync, "embedder", None)
        embedder = shared if shared is not None and shared.path == Path(c.model) else \
            Embedder(c.model, providers=c.providers, threads=c.threads)
        embedder.warmup()
        with Gallery.open(c.gallery, embedder) as gallery:
            self.gallery, self.embedder, self._first_gallery = gallery, embedder, gallery
            self._follower = RolloutFollower(self.sync)
            self.recognizer = Recognizer(embedder, gallery, c.smoothing, c.threshold)
            info = gallery.info()
            self.hub.publish({"event": "started", "model": str(c.model),
                              "gallery": str(c.gallery), "classes": info["classes"],
                              "threshold": self.recognizer.threshold or info["threshold"],
                              "provider": embedder.provider, "source": str(c.source),
                              **self.announce})
            self._set(state="connecting")
            self.enrollment.start()
            sd_notify("READY=1")
            try:
                self._loop()
            finally:
                self._set(state="stopped")
                sd_notify("STOPPING=1")
                self.enrollment.stop()  # before the gallery closes
                if self.gallery is not gallery:
                    self.gallery.close()    # one opened after a fleet rollout
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
                        with self._lock:
                            self._frame = last
                        self._run_jobs(last)
                        if self._stop.is_set():
                            break
                        self._follower.check(self)
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

    def switch_model(self, path) -> None:
        """Reopen model and gallery after a fleet rollout re-embedded the gallery for the
        model at ``path`` (on the loop thread, between frames). The old gallery object stays
        open for an enrollment still using it: its write is refused (another model)."""
        from tledge.runtime import Embedder, Gallery, Recognizer

        c = self.config
        try:
            embedder = Embedder(path, providers=c.providers, threads=c.threads)
            embedder.warmup()
            gallery = Gallery.open(c.gallery, embedder)
        except TledgeError as exc:
            log.error("cannot follow the fleet's model rollout to %s: %s", path, exc)
            return
        previous = self.gallery
        self.gallery, self.embedder = gallery, embedder
        self.recognizer = Recognizer(embedder, gallery, c.smoothing, c.threshold)
        self.debouncer.reset()
        if previous is not self._first_gallery:
            previous.close()
        self.hub.publish({"event": "model_changed", "model": str(path),
                          "fingerprint": embedder.fingerprint, "classes": len(gallery.labels())})

    def _model_changed(self, exc: ModelChangedError) -> None:
        """The gallery now holds another model's vectors. In a fleet the sync agent has that
        model: switch to it. Otherwise stop (exit 1) rather than compare old-model frames
        with new-model samples; the message says which model to start with."""
        path = wait_for_model(self.sync, exc.fingerprint)
        if path is not None:
            self.switch_model(path)
            return
        log.error("%s", exc)
        self.exit_code = 1
        self.hub.publish({"event": "model_changed", "error": str(exc),
                          "fingerprint": exc.fingerprint})
        self.stop("the gallery was re-embedded for another model")

    def _lost(self, error: str, retry_in: float) -> None:
        with self._lock:
            self._state["source_lost"] += 1
            self._state["state"] = "source_lost"
            self._frame = None  # never enroll a picture of a camera that is gone
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
        try:
            result = self.recognizer.recognize(frame.image, self.config.roi)
        except ModelChangedError as exc:  # re-embedded under us: never answer with the old model
            self._model_changed(exc)
            return
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

    # -- the enrollment worker's thread ------------------------------------------------------
    def _enroll(self, job: EnrollJob) -> dict:
        """Store ``job`` in the gallery (runs on the enrollment thread, never the loop's)."""
        cancelled = job.cancelled.is_set
        failed: list[dict] = []
        if job.frame is not None:
            shots = [job.frame]
        else:
            good, failed = screen(job.images or [], cancelled)
            if not good:
                reasons = "; ".join(f["error"] for f in failed[:3])
                raise ImageError(f"none of the {len(failed)} images could be read: {reasons}")
            shots = LazyImages(job.images, good, cancelled)
        result = self.gallery.enroll(job.label, shots, skip_bad=True)
        self.submit(_forget_history)  # the loop resets its smoothing between frames
        failed += [{"image": name, "error": reason} for name, reason in result.failed]
        return self.hub.publish({
            "event": "enrolled", "label": result.label, "added": result.added,
            "duplicates": getattr(result, "duplicates", 0),
            "sample_ids": [int(i) for i in getattr(result, "sample_ids", [])],
            "failed": failed, "classes": len(self.gallery.labels())})


def _forget_history(service: KioskService, _frame) -> None:
    """After the gallery changed, old smoothing and debounce state no longer apply."""
    service.recognizer.reset()
    service.debouncer.reset()
