"""``tledge kiosk``: wire the loop, the event sinks, the HTTP API and the signals together."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from tledge.errors import TledgeError
from tledge.kiosk.hub import EventHub, json_lines
from tledge.kiosk.server import MIN_TOKEN, KioskServer
from tledge.kiosk.service import KioskConfig, KioskService

log = logging.getLogger("tledge")
TOKEN_ENV = "TLEDGE_KIOSK_TOKEN"


def read_token(token_file: Path | None) -> str:
    """The enrollment token from ``token_file`` or $TLEDGE_KIOSK_TOKEN (never from argv,
    where other users of the machine could read it)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TledgeError(f"cannot read the token file {token_file}: {exc}") from exc
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if len(token) < MIN_TOKEN:
        raise TledgeError(f"--allow-enroll needs a token of at least {MIN_TOKEN} characters in "
                          f"--token-file or ${TOKEN_ENV} (e.g. `openssl rand -hex 24`)")
    return token


def run_kiosk(config: KioskConfig, http: tuple[str, int] | None, token: str | None,
              out=None) -> int:
    """Run until SIGTERM/SIGINT, the end of a file source or a limit; returns the exit code."""
    hub = EventHub([json_lines(out or sys.stdout)])
    service = KioskService(config, hub)
    server = None
    if http is not None:
        try:
            server = KioskServer(http, service, hub, token)
        except OSError as exc:
            raise TledgeError(f"cannot listen on {http[0]}:{http[1]}: {exc.strerror}; "
                              "choose another --port") from exc
        server.start()
        service.announce = {"http": server.url, "enroll_enabled": token is not None}
        log.info("HTTP API on %s (health, status, last, events%s)", server.url,
                 ", enroll" if token else "")
    previous = {}

    def on_signal(signum, _frame) -> None:
        service.stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        return service.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
            server.server_close()
