"""The kiosk's HTTP API as a small WSGI application (served by waitress, see server.py).

GET  /health        200 {"status": "ok"} while frames arrive, else 503 (for watchdogs)
GET  /status        the loop's state, frame counters, fps, source losses, dropped events
GET  /last          the last debounced recognition event (204 before the first)
GET  /events        server-sent events: every event as it happens (at most N streams)
POST /enroll        only with --allow-enroll and "Authorization: Bearer TOKEN";
                    {"label": "cup"} enrolls the current frame, {"label": "cup", "images":
                    ["<base64 JPEG/PNG>", ...]} those images. 200 with what was stored, or
                    202 {"job": ID} when it takes longer than the request timeout.
GET  /enroll/<id>   the state and result of an enrollment job (same token)
Every answer but 204 and the event stream is a JSON object; errors are {"error": "..."}.
"""

from __future__ import annotations

import hmac
import re
import threading

from tledge.errors import TledgeError
from tledge.kiosk.enroll import EnrollJob
from tledge.kiosk.enroll_body import parse_enroll_body
from tledge.kiosk.enroll_images import RequestError
from tledge.kiosk.http_guard import HostGuard, HttpLimits, respond
from tledge.kiosk.hub import EventHub
from tledge.kiosk.service import KioskService
from tledge.kiosk.sse import EventStreams

ENDPOINTS = ["GET /health", "GET /status", "GET /last", "GET /events", "POST /enroll",
             "GET /enroll/<job>"]
_JOB_PATH = re.compile(r"/enroll/([0-9a-f]{1,64})")


class KioskApp:
    """Routes requests to the service; ``guarded`` (http_guard) wraps it for errors."""

    def __init__(self, service: KioskService, hub: EventHub, token: str | None,
                 limits: HttpLimits, guard: HostGuard) -> None:
        self.service, self.hub, self.token = service, hub, token
        self.limits, self.guard = limits, guard
        self.streams = EventStreams(hub, limits.max_subscribers, limits.keepalive)
        # POST /enroll requests that may wait for their job; more answer 202 at once
        self.waiters = service.config.enroll_queue + 1
        self._waiting = threading.BoundedSemaphore(self.waiters)

    def close(self) -> None:
        self.streams.closing.set()

    def __call__(self, environ, start_response):
        refusal = self.guard.refusal(environ)
        if refusal:
            return respond(start_response, refusal[0], {"error": refusal[1]})
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/").rstrip("/") or "/"
        if path == "/enroll":
            return self._enroll(environ, start_response) if method == "POST" else \
                self._not_allowed(start_response, "POST")
        job = _JOB_PATH.fullmatch(path)
        route = self._job if job else {"/health": self._health, "/status": self._status,
                                       "/last": self._last, "/events": self._events}.get(path)
        if route is None:
            return respond(start_response, 404, {"error": f"no such endpoint {ascii(path[:100])}",
                                                 "endpoints": ENDPOINTS})
        if method != "GET":
            return self._not_allowed(start_response, "GET")
        return route(environ, start_response, job.group(1)) if job else \
            route(environ, start_response)

    def _not_allowed(self, start_response, allow: str):
        return respond(start_response, 405, {"error": f"use {allow} here"}, [("Allow", allow)])

    # -- reading ------------------------------------------------------------------------------
    def _health(self, environ, start_response):
        ok, body = self.service.health()
        return respond(start_response, 200 if ok else 503, body)

    def _status(self, environ, start_response):
        return respond(start_response, 200, {**self.service.status(),
                                             "enroll_enabled": self.token is not None})

    def _last(self, environ, start_response):
        last = self.hub.latest("recognition")
        return respond(start_response, 200 if last else 204, last)

    def _events(self, environ, start_response):
        stream = self.streams.open()
        if stream is None:
            return respond(start_response, 503, {
                "error": f"all {self.limits.max_subscribers} event streams are in use; "
                         "retry later"}, [("Retry-After", "5")])
        start_response("200 OK", [("Content-Type", "text/event-stream"),
                                  ("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")])
        return stream

    # -- enrollment ---------------------------------------------------------------------------
    def _authorized(self, environ, start_response):
        """None when the request may enroll, else the refusal's response."""
        if self.token is None:
            return respond(start_response, 403, {"error": "enrollment over HTTP is disabled; "
                                                  "start the kiosk with --allow-enroll"})
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
            return respond(start_response, 401, {"error": "missing or wrong bearer token"},
                           [("WWW-Authenticate", "Bearer")])
        return None

    def _enroll(self, environ, start_response):
        refused = self._authorized(environ, start_response)
        if refused is not None:
            return refused
        try:
            job = parse_enroll_body(environ, self.limits)
            if job.images is None:
                job.frame = self.service.current_frame()
                if job.frame is None:
                    raise RequestError(503, "no camera frame yet to enroll from; retry shortly")
            job = self.service.enrollment.submit(job)
        except RequestError as exc:
            headers = [("Retry-After", "5")] if exc.status in (429, 503) else []
            return respond(start_response, exc.status, {"error": str(exc)}, headers)
        except TledgeError as exc:  # e.g. the --roi does not fit the frame
            return respond(start_response, 422, {"error": str(exc)})
        if self._waiting.acquire(blocking=False):
            try:
                job.finished.wait(self.limits.request_timeout)
            finally:
                self._waiting.release()
        return self._job_answer(start_response, job)

    def _job(self, environ, start_response, job_id: str):
        refused = self._authorized(environ, start_response)
        if refused is not None:
            return refused
        job = self.service.enrollment.get(job_id)
        if job is None:
            return respond(start_response, 404, {"error": f"no recent enrollment job {job_id}"})
        return respond(start_response, 200, job.document())

    def _job_answer(self, start_response, job: EnrollJob):
        if not job.finished.is_set():
            return respond(start_response, 202, job.document(),
                           [("Location", f"/enroll/{job.id}")])
        return respond(start_response, job.status, job.document())
