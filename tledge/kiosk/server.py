"""The kiosk's HTTP server: the WSGI app of http_app.py served by waitress.

Waitress reads every request whole, asynchronously, before a worker thread sees it, so an
idle or slow client holds a socket but never a thread; a rejected request's body has
already been consumed and cannot be read as the next request. On top of waitress's idle
timeout (``channel_timeout``), ``_Server.maintenance`` also closes a connection that
trickles one request for longer than the idle timeout, and one that stopped reading its
response (an event stream nobody reads). Errors waitress answers itself (413, 431, 400)
are JSON like every other answer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterable

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask

from tledge.errors import TledgeError
from tledge.kiosk.http_app import KioskApp
from tledge.kiosk.http_guard import HostGuard, HttpLimits, guarded
from tledge.kiosk.hub import EventHub
from tledge.kiosk.service import KioskService

log = logging.getLogger("tledge")
MIN_TOKEN = 16
LOOP_POLL_S = 0.2


class _JsonErrorTask(ErrorTask):
    """Waitress's own error answers (oversized body or headers, malformed request) in JSON."""

    def execute(self) -> None:
        error = self.request.error
        message = " ".join(f"{error.reason}: {error.body}".split())
        body = json.dumps({"error": message}).encode("ascii")
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    error_task_class = _JsonErrorTask


class _Server(TcpWSGIServer):
    channel_class = _Channel

    def maintenance(self, now: float) -> None:
        """Runs on the server's loop thread every ``cleanup_interval`` seconds."""
        super().maintenance(now)  # idle connections without a request
        limit = self.adj.channel_timeout
        for channel in list(self.active_channels.values()):
            if channel.requests:
                # a response is being written: the client must keep reading it
                if channel.total_outbufs_len and now - channel.last_activity > limit:
                    log.info("closing %s: it stopped reading its response", channel.addr)
                    channel.handle_close()  # wakes the worker blocked on the full buffer
            elif channel.request is not None:
                # a request is arriving: all of it must arrive within the idle timeout
                started = channel.request.__dict__.setdefault("tledge_started", now)
                if now - started > limit:
                    channel.will_close = True


class KioskServer:
    """The HTTP API of ``service`` on ``address``; ``start`` serves from a thread."""

    def __init__(self, address: tuple[str, int], service: KioskService, hub: EventHub,
                 token: str | None = None, request_timeout: float | None = None,
                 limits: HttpLimits | None = None, allowed_hosts: Iterable[str] = ()) -> None:
        if token is not None and len(token) < MIN_TOKEN:
            raise TledgeError(f"the enrollment token must be at least {MIN_TOKEN} characters")
        limits = limits or HttpLimits()
        if request_timeout is not None:
            limits = dataclasses.replace(limits, request_timeout=request_timeout)
        self.limits, self.service, self.hub, self.token = limits, service, hub, token
        self.app = KioskApp(service, hub, token, limits, HostGuard(allowed_hosts))
        self._map: dict = {}
        self._server = _Server(
            guarded(self.app), map=self._map, host=address[0], port=address[1],
            threads=limits.threads(self.app.waiters), connection_limit=limits.max_connections,
            channel_timeout=limits.idle_timeout, cleanup_interval=1,
            max_request_body_size=limits.max_body, max_request_header_size=limits.max_header,
            outbuf_high_watermark=2**20, ident="tledge-kiosk", clear_untrusted_proxy_headers=True,
            expose_tracebacks=False)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = str(self._server.effective_host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._serve, name="kiosk-http", daemon=True)
        self._thread.start()
        return self._thread

    def _serve(self) -> None:
        while not self._closing.is_set():
            # poll(), not select(): hundreds of sockets may exceed select's FD_SETSIZE
            wasyncore.loop(timeout=LOOP_POLL_S, map=self._map, use_poll=True, count=1)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for dispatcher in list(self._map.values()):
            if isinstance(dispatcher, HTTPChannel):
                dispatcher.handle_close()
        self._server.close()  # the listening socket and the wake-up trigger

    def close(self) -> None:
        """End event streams, close every connection, stop the worker threads."""
        if self._closing.is_set():
            return
        self.app.close()
        self._closing.set()
        if self._thread is not None:
            self._thread.join(10)
        else:
            self._close_sockets()
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)

    # the names of http.server, kept for callers of the earlier server
    def shutdown(self) -> None:
        self.close()

    def server_close(self) -> None:
        self.close()
