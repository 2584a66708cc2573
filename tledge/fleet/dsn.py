"""Hub connection strings: no password on the command line or in logs, libpq does the rest.

A DSN is a ``postgresql://`` URL or a ``key=value`` conninfo. Passwords come from libpq's
usual places (PGPASSWORD, PGPASSFILE or ~/.pgpass, PGSERVICE/pg_service.conf); TLS options
such as ``sslmode`` pass through untouched.
"""

from __future__ import annotations

from typing import Any

from tledge.fleet import FleetError

CONNECT_TIMEOUT_S = 5          # a dead hub must not stall a device for long
STATEMENT_TIMEOUT_MS = 30_000  # no statement of ours runs longer on a healthy hub
PASSWORD_HELP = ("put the password in ~/.pgpass (or the file PGPASSFILE names), a service in "
                 "pg_service.conf (PGSERVICE), or PGPASSWORD; never in the URL")


def psycopg():
    """The psycopg module, or an error naming the extra to install."""
    try:
        import psycopg as module
    except ImportError as exc:
        raise FleetError("the fleet hub needs psycopg 3: pip install 'tledge[fleet]'") from exc
    return module


def parse(dsn: str) -> dict[str, Any]:
    """The DSN's parameters; refuses one that carries a password."""
    try:
        params = psycopg().conninfo.conninfo_to_dict(dsn)
    except psycopg().ProgrammingError as exc:
        raise FleetError(f"the hub URL is not a valid PostgreSQL DSN ({exc}); "
                         "use postgresql://USER@HOST:PORT/DB or 'host=... dbname=...'") from exc
    if params.get("password"):
        raise FleetError(f"the hub URL contains a password; remove it and {PASSWORD_HELP}")
    return params


def redact(dsn: str) -> str:
    """A form of ``dsn`` safe to print or log (any password replaced)."""
    try:
        params = psycopg().conninfo.conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - never let a bad DSN leak through an error message
        return "<unparsable DSN>"
    if "password" in params:
        params["password"] = "***"
    return " ".join(f"{k}={v}" for k, v in params.items())


def connect(dsn: str, autocommit: bool = False, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS):
    """A psycopg connection with bounded connect and statement times and TCP keepalives, so
    a hub that vanishes is noticed within seconds instead of hanging a device."""
    params = parse(dsn)
    extra: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1,
                             "keepalives_idle": 5, "keepalives_interval": 2,
                             "keepalives_count": 3, "application_name": "tledge"}
    extra = {k: v for k, v in extra.items() if k not in params}
    options = params.get("options", "")
    extra["options"] = f"{options} -c statement_timeout={int(statement_timeout_ms)}".strip()
    pg = psycopg()
    try:
        return pg.connect(dsn, autocommit=autocommit, **extra)
    except pg.OperationalError as exc:
        raise FleetError(f"cannot reach the hub at {redact(dsn)}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
