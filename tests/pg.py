"""A real PostgreSQL server for the fleet tests, started on loopback in a temporary folder.

PostgreSQL refuses to run as root, so under root (CI) the data folder is owned by the
``postgres`` OS user and ``initdb``/``pg_ctl`` run through ``runuser -u postgres --``.
Clients authenticate with scram passwords kept in a pgpass file (never in a DSN).
Without PostgreSQL binaries the tests skip, unless ``TLEDGE_REQUIRE_PG=1`` (CI) makes that
a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ADMIN, ADMIN_PASSWORD = "tledge_admin", "admin-" + uuid.uuid4().hex[:12]
SUPER_PASSWORD = "super-" + uuid.uuid4().hex[:12]
DEVICE_PASSWORD = "device-" + uuid.uuid4().hex[:12]


def find_bin(name: str) -> str | None:
    """``initdb``/``pg_ctl``: PATH, /usr/local/bin, then Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name) or (f"/usr/local/bin/{name}"
                                   if os.access(f"/usr/local/bin/{name}", os.X_OK) else None)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One throw-away cluster: ``start``, ``stop(mode)``, ``kill9``, ``admin_dsn(db)``."""

    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="tledge-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.passfile = self.root / "pgpass"
        self.passfile.write_text(
            f"127.0.0.1:*:*:{ADMIN}:{ADMIN_PASSWORD}\n127.0.0.1:*:*:postgres:{SUPER_PASSWORD}\n"
            f"127.0.0.1:*:*:tledge_device:{DEVICE_PASSWORD}\n")
        self.passfile.chmod(0o600)
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)  # the test process (root) reads the log

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = (["runuser", "-u", "postgres", "--"] if self.as_root else []) + list(args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)

    def init(self) -> None:
        pwfile = self.root / "superpw"
        pwfile.write_text(SUPER_PASSWORD + "\n")
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth-host=scram-sha-256",
                  "--auth-local=trust", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                       "max_connections = 200\nshared_buffers = 32MB\n")

    def start(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def kill9(self) -> None:
        """SIGKILL the postmaster (a crash mid-transaction), then let its backends die."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.1)
        # Orphaned backends exit on their own once they see the postmaster gone.
        time.sleep(0.5)

    def restart_after_crash(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                self.start()
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def dsn(self, db: str, user: str = ADMIN) -> str:
        return (f"host=127.0.0.1 port={self.port} dbname={db} user={user} "
                f"passfile={self.passfile}")

    def psql_admin(self, sql: str, db: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.dsn(db, "postgres"), autocommit=True) as conn:
            conn.execute(sql)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _missing(reason: str):
    if os.environ.get("TLEDGE_REQUIRE_PG") == "1":
        pytest.fail(f"TLEDGE_REQUIRE_PG=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server():
    """A session-wide PostgreSQL on 127.0.0.1 with an admin role (``tledge_admin``)."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not (initdb and pg_ctl):
        _missing("no PostgreSQL server binaries (initdb/pg_ctl); install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg 3 is not installed; pip install 'tledge[fleet]'")
    server = PgServer(initdb, pg_ctl)
    try:
        server.init()
        server.start()
        server.psql_admin(f"CREATE ROLE {ADMIN} LOGIN CREATEROLE PASSWORD '{ADMIN_PASSWORD}'")
        server.psql_admin(f"CREATE ROLE tledge_device LOGIN PASSWORD '{DEVICE_PASSWORD}'")
        yield server
    finally:
        server.destroy()


@pytest.fixture()
def pg_db(pg_server) -> str:
    """A fresh, empty database owned by the admin role; its DSN (no password in it)."""
    name = "t_" + uuid.uuid4().hex[:12]
    pg_server.psql_admin(f"CREATE DATABASE {name} OWNER {ADMIN}")
    return pg_server.dsn(name)


class DeviceProc:
    """A real device process (tests/fleet_device.py) driven over stdin/stdout."""

    def __init__(self, model, gallery, dsn: str, name: str, passfile: Path | None = None):
        import json  # noqa: F401 - used by call()
        import sys

        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        self.args = [sys.executable, "-m", "tests.fleet_device", str(model), str(gallery), dsn,
                     name]
        self.env, self.name = env, name
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        assert self._read(120)["ready"]

    def _read(self, timeout: float) -> dict:
        import json
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.proc.kill()
            raise TimeoutError(f"device {self.name} did not answer in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"device {self.name} died: {self.proc.stderr.read()[-3000:]}")
        return json.loads(line)

    def send(self, op: str, **kw) -> None:
        import json

        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()

    def call(self, op: str, timeout: float = 60, check: bool = True, **kw) -> dict:
        self.send(op, **kw)
        reply = self._read(timeout)
        if check and not reply["ok"]:
            raise AssertionError(f"{self.name} {op}: {reply['error']}\n{reply.get('trace')}")
        return reply

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit", timeout=20, check=False)
            except (OSError, TimeoutError, RuntimeError):
                pass
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)


def wait_until(predicate, timeout: float = 60.0, every: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@pytest.fixture()
def hub_dsn(pg_db) -> str:
    """A fresh database initialised as a tledge hub."""
    from tledge.fleet import hub

    hub.init(pg_db)
    return pg_db
