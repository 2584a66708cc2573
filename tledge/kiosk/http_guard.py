"""What protects the kiosk's HTTP API: limits, the bind check, the Host/Origin allow-list,
and a wrapper that turns any exception into a JSON answer.

DNS rebinding: a web page on ``evil.example`` whose name is re-pointed at 127.0.0.1 can
read a loopback API as "same origin". Its requests still carry ``Host: evil.example``, so
only requests naming this machine (or a name the operator allowed) are served.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from tledge.errors import TledgeError

log = logging.getLogger("tledge")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 415: "Unsupported Media Type", 421: "Misdirected Request",
           422: "Unprocessable Content", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable", 507: "Insufficient Storage"}


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on what clients can hold or send (defaults in brackets are the CLI's)."""

    idle_timeout: float = 15.0      # s without a complete request (or unread output) -> closed
    max_connections: int = 256      # open connections; beyond, new ones wait in the backlog
    max_body: int = 32 * 2**20      # bytes in a request body
    max_header: int = 16 * 2**10    # bytes of request line + headers
    max_images: int = 32            # images in one POST /enroll
    max_subscribers: int = 8        # concurrent /events streams
    request_timeout: float = 30.0   # s POST /enroll waits for its job before 202 Accepted
    keepalive: float = 15.0         # s between SSE keep-alive comments
    spare_threads: int = 4          # threads left for /health when streams and enrolls wait

    def threads(self, enroll_waiters: int) -> int:
        """Worker threads: every SSE slot and enroll waiter busy still leaves spares."""
        return self.max_subscribers + enroll_waiters + self.spare_threads


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool, allow_enroll: bool) -> None:
    """Refuse a non-loopback ``--host`` unless ``--allow-remote``; warn about remote enroll."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise TledgeError(f"--host {host} would open the kiosk's API to other machines; keep "
                          "the default 127.0.0.1, or add --allow-remote (behind a firewall)")
    log.warning("the HTTP API listens on %s: other machines can read recognition events", host)
    if allow_enroll:
        log.warning("enrollment is enabled on a remote address: the bearer token travels "
                    "unencrypted; prefer an SSH tunnel or a TLS proxy to 127.0.0.1")


def host_name(value: str) -> str:
    """The host part of a Host header or an --allowed-host value, lower-case, no port."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    name, _, port = value.rpartition(":")
    return (name if name and port.isdigit() else value).rstrip(".")


class HostGuard:
    """Serves only requests whose Host names this machine or an allowed host, and refuses
    any Origin (a browser page) from elsewhere."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = LOOPBACK_NAMES | {host_name(h) for h in allowed}

    def refusal(self, environ: dict) -> tuple[int, str] | None:
        host = environ.get("HTTP_HOST")
        if not host:
            return 400, "a Host header is required"
        if host_name(host) not in self.allowed:
            return 421, (f"this kiosk does not serve Host {ascii(host[:100])}; use 127.0.0.1 "
                         "or start it with --allowed-host NAME")
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and (urlsplit(origin).hostname or "") not in self.allowed:
            return 403, f"cross-site request from Origin {ascii(origin[:100])} refused"
        return None


def json_body(body: dict | None) -> bytes:
    """Always ASCII JSON: a lone surrogate in a message can never break the answer."""
    return b"" if body is None else json.dumps(body, ensure_ascii=True).encode("ascii")


def respond(start_response, status: int, body: dict | None,
            headers: list[tuple[str, str]] | None = None, exc_info=None) -> list[bytes]:
    data = json_body(body)
    out = [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
           ("Cache-Control", "no-store"), *(headers or [])]
    if body is None:
        out = out[1:]
    start_response(f"{status} {REASONS.get(status, 'Error')}", out, exc_info)
    return [data]


def guarded(app: Callable) -> Callable:
    """A WSGI wrapper: any exception (a full disk, RecursionError, MemoryError, a bug)
    becomes a one-line JSON 500 for the client and a traceback in the log."""
    def wrapper(environ, start_response):
        try:
            return app(environ, start_response)
        except Exception as exc:  # noqa: BLE001 (the last line of defence of every request)
            log.error("HTTP %s %s failed", environ.get("REQUEST_METHOD"),
                      environ.get("PATH_INFO"), exc_info=True)
            message = f"internal error ({type(exc).__name__}); see the kiosk's log"
            return respond(start_response, 500, {"error": message}, exc_info=sys.exc_info())
    return wrapper
