"""``tledge kiosk``: wire the loop, the event sinks, the HTTP API and the signals together."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

from tledge.errors import TledgeError
from tledge.kiosk.http_guard import HttpLimits, check_bind, is_loopback
from tledge.kiosk.hub import EventHub
from tledge.kiosk.server import MIN_TOKEN, KioskServer
from tledge.kiosk.service import KioskConfig, KioskService
from tledge.kiosk.sinks import QueuedSink

log = logging.getLogger("tledge")
TOKEN_ENV = "TLEDGE_KIOSK_TOKEN"
WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def read_token(token_file: Path | None) -> str:
    """The enrollment token from ``token_file`` or $TLEDGE_KIOSK_TOKEN (never from argv,
    where other users of the machine could read it)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TledgeError(f"cannot read the token file {token_file}: {exc}") from exc
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if len(token) < MIN_TOKEN:
        raise TledgeError(f"--allow-enroll needs a token of at least {MIN_TOKEN} characters in "
                          f"--token-file or ${TOKEN_ENV} (e.g. `openssl rand -hex 24`)")
    return token


def start_server(service: KioskService, hub: EventHub, http: tuple[str, int],
                 token: str | None, limits: HttpLimits | None = None,
                 allowed_hosts: Iterable[str] = (), allow_remote: bool = False) -> KioskServer:
    """Check the address (loopback unless ``allow_remote``), then serve the API."""
    host, port = http
    check_bind(host, allow_remote, token is not None)
    allowed = list(allowed_hosts)
    if not is_loopback(host) and host not in WILDCARDS:
        allowed.append(host)  # clients name the address they connect to
    try:
        server = KioskServer((host, port), service, hub, token, limits=limits,
                             allowed_hosts=allowed)
    except OSError as exc:
        raise TledgeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                          "choose another --port") from exc
    server.start()
    service.announce = {"http": server.url, "enroll_enabled": token is not None}
    log.info("HTTP API on %s (health, status, last, events%s)", server.url,
             ", enroll" if token else "")
    return server


def run_kiosk(config: KioskConfig, http: tuple[str, int] | None, token: str | None,
              out=None, limits: HttpLimits | None = None, allowed_hosts: Iterable[str] = (),
              allow_remote: bool = False, sync=None) -> int:
    """Run until SIGTERM/SIGINT, the end of a file source or a limit; returns the exit code.

    ``sync``: a fleet sync agent (``start``/``stop``/``status``) run beside the loop."""
    sink = QueuedSink(out or sys.stdout)
    hub = EventHub([sink])
    service = KioskService(config, hub)
    service.sync = sync
    server = None
    previous = {}

    def on_signal(signum, _frame) -> None:
        service.stop(signal.Signals(signum).name)

    try:
        if http is not None:
            server = start_server(service, hub, http, token, limits, allowed_hosts,
                                  allow_remote)
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
        if sync is not None:
            sync.start()
        return service.run()
    finally:
        if sync is not None:
            sync.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.close()
        sink.close()
