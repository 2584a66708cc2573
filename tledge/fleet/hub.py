"""The hub's administration: versioned migrations, status, model rollout, device roles.

Migrations are ``migrations/NNNN_name.sql`` files applied in order, each in one transaction
recorded in ``schema_migrations``; a lock keeps two concurrent upgrades from racing.
"""

from __future__ import annotations

import re
from pathlib import Path

from tledge.fleet import FleetError
from tledge.fleet.dsn import connect

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 7137000
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def migrations() -> list[tuple[int, str, Path]]:
    """(version, name, path) of every shipped migration, in order."""
    found = []
    for path in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append((int(path.name[:4]), path.stem[5:], path))
    return found


def applied_versions(conn) -> list[int]:
    exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
    if exists is None:
        return []
    return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def upgrade(dsn: str, require_empty: bool = False) -> list[int]:
    """Apply the migrations this hub lacks; returns the versions applied now."""
    with connect(dsn, statement_timeout_ms=0) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            done = applied_versions(conn)
            if require_empty and done:
                raise FleetError(f"the hub is already initialised (schema version {max(done)}); "
                                 "use `tledge hub upgrade` to bring it up to date")
            conn.commit()
            applied = []
            for version, name, path in migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer "
                                 "PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL "
                                 "DEFAULT now())")
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations(version, name) VALUES (%s, %s)",
                                 (version, name))
                applied.append(version)
            return applied
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            conn.commit()


def init(dsn: str) -> list[int]:
    """Create the hub's schema in an empty database."""
    return upgrade(dsn, require_empty=True)


def check_schema(conn) -> None:
    """Refuse a database that is not an up-to-date tledge hub, saying what to run."""
    done = applied_versions(conn)
    latest = migrations()[-1][0]
    if not done:
        raise FleetError("this database is not a tledge hub; create it with "
                         "`tledge hub init --url URL`")
    if max(done) < latest:
        raise FleetError(f"the hub's schema is version {max(done)}, this tledge needs {latest}; "
                         "run `tledge hub upgrade --url URL`")


def status(dsn: str) -> dict:
    """The hub at a glance: head of the log, target model, and each device's lag."""
    with connect(dsn) as conn:
        check_schema(conn)
        head = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
        settings = dict(conn.execute("SELECT key, value FROM settings").fetchall())
        classes, samples = conn.execute(
            "SELECT (SELECT count(*) FROM classes WHERE deleted IS NULL AND merged_into IS NULL),"
            " (SELECT count(*) FROM samples WHERE state = 'live')").fetchone()
        rows = conn.execute(
            "SELECT id, name, role, fingerprint, last_seen, last_applied_seq, pending "
            "FROM devices ORDER BY name, id").fetchall()
    devices = [{"id": str(r[0]), "name": r[1], "role": r[2], "fingerprint": r[3],
                "last_seen": r[4].isoformat() if r[4] else None, "applied_seq": r[5],
                "lag": head - r[5], "pending": r[6]} for r in rows]
    return {"head_seq": head, "classes": classes, "samples": samples,
            "target_fingerprint": settings.get("target_fingerprint"),
            "target_model": settings.get("target_model"), "devices": devices}


def rollout(dsn: str, model: Path) -> str:
    """Store ``model`` in the hub and make its fingerprint the fleet's target; returns it.

    The file is verified (tledge metadata and weight fingerprint) before anything is stored;
    devices fetch it, re-embed and switch (see ``tledge.fleet.rollout``).
    """
    from tledge.runtime.embedder import load_verified

    data, info = load_verified(Path(model))
    with connect(dsn, statement_timeout_ms=0) as conn:
        check_schema(conn)
        with conn.transaction():
            conn.execute("INSERT INTO models(fingerprint, name, data) VALUES (%s, %s, %s) "
                         "ON CONFLICT (fingerprint) DO NOTHING",
                         (info.fingerprint, Path(model).name, data))
            for key, value in (("target_fingerprint", info.fingerprint),
                               ("target_model", Path(model).name)):
                conn.execute("INSERT INTO settings(key, value) VALUES (%s, %s) ON CONFLICT (key) "
                             "DO UPDATE SET value = excluded.value, updated = now()", (key, value))
            conn.execute("SELECT pg_notify('tledge_changes', 'rollout')")
    return info.fingerprint


def grant_device_sql(role: str) -> str:
    """GRANTs for a device role: read the log and the data, push changes and embeddings and
    report itself only through the hub's functions. No DDL, no direct writes, no deletes."""
    if not ROLE_NAME.match(role):
        raise FleetError(f"role name {role!r} must be lower-case letters, digits and _ "
                         "(at most 63, not starting with a digit)")
    tables = "hub_info, schema_migrations, classes, samples, embeddings, changes, settings, models"
    functions = ("tledge_push(uuid, uuid, bigint, text, jsonb, bytea, text, bytea)",
                 "tledge_device_seen(uuid, text, text, bigint, integer)",
                 "tledge_put_embedding(uuid, text, bytea, uuid)")
    lines = [f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};",
             f"GRANT USAGE ON SCHEMA public TO {role};",
             f"GRANT SELECT ON {tables}, devices TO {role};"]
    lines += [f"GRANT EXECUTE ON FUNCTION {f} TO {role};" for f in functions]
    return "\n".join(lines) + "\n"


def grant_device(dsn: str, role: str) -> str:
    """Apply ``grant_device_sql(role)`` (the role must exist); returns the SQL applied."""
    sql = grant_device_sql(role)
    with connect(dsn) as conn:
        check_schema(conn)
        with conn.transaction():
            conn.execute(sql)
    return sql


def hub_digest(dsn_or_conn) -> str:
    """sha256 over the live classes (uuid, label) and samples (uuid, class, digest)."""

    own = isinstance(dsn_or_conn, str)
    conn = connect(dsn_or_conn) if own else dsn_or_conn
    try:
        rows = conn.execute(
            "SELECT c.uuid::text, c.label, s.uuid::text, s.digest FROM classes c "
            "LEFT JOIN samples s ON s.class_uuid = c.uuid AND s.state = 'live' "
            "WHERE c.deleted IS NULL AND c.merged_into IS NULL").fetchall()
    finally:
        if own:
            conn.close()
    return state_digest(rows)


def state_digest(rows) -> str:
    """Order-independent digest of (class uuid, label, sample uuid|None, digest|None) rows."""
    import hashlib

    lines = sorted("\t".join("" if v is None else str(v) for v in row) for row in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
