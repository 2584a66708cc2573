"""The kiosk's local HTTP API (standard library only).

GET  /health   200 {"status": "ok"} while frames arrive, else 503 (for watchdogs)
GET  /status   the loop's state, frame counters, fps, source losses
GET  /last     the last debounced recognition event (204 before the first)
GET  /events   server-sent events: every event as it happens
POST /enroll   only with --allow-enroll, and "Authorization: Bearer TOKEN":
               {"label": "cup"} enrolls the current camera frame;
               {"label": "cup", "images": ["<base64 JPEG/PNG>", ...]} enrolls those images.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import queue
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tledge.errors import TledgeError
from tledge.kiosk.hub import EventHub
from tledge.kiosk.service import KioskService
from tledge.runtime.images import decode_image

log = logging.getLogger("tledge")
MAX_BODY = 32 * 1024 * 1024
MIN_TOKEN = 16
KEEPALIVE_S = 15.0


class KioskServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: KioskService, hub: EventHub,
                 token: str | None = None, request_timeout: float = 30.0) -> None:
        if token is not None and len(token) < MIN_TOKEN:
            raise TledgeError(f"the enrollment token must be at least {MIN_TOKEN} characters")
        self.service, self.hub, self.token = service, hub, token
        self.request_timeout = request_timeout
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="kiosk-http", daemon=True,
                                  kwargs={"poll_interval": 0.2})
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: KioskServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("http %s - %s", self.address_string(), fmt % args)

    def _json(self, status: int, body: dict | None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        service = self.server.service
        if path == "/health":
            ok, body = service.health()
            self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
        elif path == "/status":
            self._json(HTTPStatus.OK, {**service.status(),
                                       "enroll_enabled": self.server.token is not None})
        elif path == "/last":
            last = self.server.hub.latest("recognition")
            self._json(HTTPStatus.OK if last else HTTPStatus.NO_CONTENT, last)
        elif path == "/events":
            self._stream()
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {path}", "endpoints":
                                              ["/health", "/status", "/last", "/events",
                                               "POST /enroll"]})

    def _stream(self) -> None:
        hub = self.server.hub
        q = hub.subscribe()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(b": tledge kiosk events\n\n")
            self.wfile.flush()
            while True:
                try:
                    event = q.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    continue
                data = json.dumps(event, ensure_ascii=False)
                self.wfile.write(f"event: {event['event']}\ndata: {data}\n\n".encode())
                self.wfile.flush()
                if event["event"] == "stopped":
                    return
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            hub.unsubscribe(q)

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/enroll":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint POST {path}"})
            return
        token = self.server.token
        if token is None:
            self._json(HTTPStatus.FORBIDDEN, {"error": "enrollment over HTTP is disabled; start "
                                              "the kiosk with --allow-enroll and a token"})
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return
        try:
            label, images = self._enroll_request()
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        service = self.server.service
        future = service.submit(service.enroll_job(label, images))
        try:
            event = future.result(timeout=self.server.request_timeout)
        except TimeoutError:
            self._json(HTTPStatus.GATEWAY_TIMEOUT, {"error": "the recognition loop did not "
                                                    "answer in time"})
            return
        except TledgeError as exc:
            self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc)})
            return
        self._json(HTTPStatus.OK, event)

    def _enroll_request(self) -> tuple[str, list | None]:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            raise ValueError(f"a JSON body of 1 byte to {MAX_BODY // 2**20} MiB is required")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("label"), str):
            raise ValueError('expected {"label": "name"} with optional "images": [base64, ...]')
        images = body.get("images")
        if images is None:
            return body["label"], None
        if not isinstance(images, list) or not images:
            raise ValueError('"images" must be a non-empty list of base64-encoded images')
        decoded = []
        for i, item in enumerate(images):
            try:
                decoded.append(decode_image(base64.b64decode(item, validate=True),
                                            f"images[{i}]"))
            except (binascii.Error, TypeError) as exc:
                raise ValueError(f"images[{i}] is not base64: {exc}") from exc
            except TledgeError as exc:
                raise ValueError(str(exc)) from exc
        return body["label"], decoded
