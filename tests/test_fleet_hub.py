"""The fleet hub against a real PostgreSQL: migrations, conflict rules, replicas applying
the log (in-process agents; the multi-process scenarios are in test_fleet_scenarios)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from tests import pg
from tledge.fleet import FleetError, hub
from tledge.fleet.cli import main as fleet_main
from tledge.fleet.dsn import connect, parse, redact
from tledge.fleet.sync import SyncAgent
from tledge.runtime import Embedder, Gallery

pg_server, pg_db, hub_dsn = pg.pg_server, pg.pg_db, pg.hub_dsn  # fixtures


def make_device(tmp_path, name, tiny_model, dsn):
    embedder = Embedder(tiny_model, providers="cpu", threads=1)
    gallery = Gallery.create(tmp_path / name, embedder)
    return gallery, SyncAgent(tmp_path / name, dsn, embedder, device_name=name)


@pytest.fixture()
def devices(tmp_path, tiny_model, hub_dsn):
    made = [make_device(tmp_path, n, tiny_model, hub_dsn) for n in ("a", "b")]
    yield made
    for gallery, agent in made:
        agent.stop()
        gallery.close()


def state(gallery) -> dict[str, int]:
    return {c.label: c.samples for c in gallery.classes()}


def converge(*agents) -> None:
    for _ in range(2):  # everyone pushes, then everyone has pulled everything
        for agent in agents:
            agent.sync_once()
    digests = {agent.replica.digest() for agent in agents}
    assert digests == {hub.hub_digest(agents[0].dsn)}


def test_init_twice_is_refused_and_upgrade_is_idempotent(pg_db):
    assert hub.init(pg_db) == [1]
    with pytest.raises(FleetError, match="already initialised"):
        hub.init(pg_db)
    assert hub.upgrade(pg_db) == []


def test_a_database_that_is_not_a_hub_is_explained(pg_db):
    with pytest.raises(FleetError, match="hub init"):
        hub.status(pg_db)


def test_passwords_in_urls_are_refused_and_never_printed(hub_dsn, capsys):
    with pytest.raises(FleetError, match="pgpass"):
        parse("postgresql://u:secret@127.0.0.1/db")
    assert "secret" not in redact("host=h password=secret")
    assert fleet_main(["hub", "status", "--url", "postgresql://u:s3cr3t@127.0.0.1:1/x"]) == 1
    err = capsys.readouterr().err
    assert "pgpass" in err and "s3cr3t" not in err
    assert fleet_main(["hub", "status", "--url", hub_dsn]) == 0


def test_enroll_on_a_is_recognised_on_b(devices, sample_files, query_files):
    (ga, a), (gb, b) = devices
    ga.enroll("cup", sample_files["cup"][:2])
    ga.enroll("watch", sample_files["watch"][:2])
    converge(a, b)
    assert state(gb) == {"cup": 2, "watch": 2}
    vec = gb.embedder.embed([query_files["cup"][0]])[0]
    assert gb.classify(vec)[0] == "cup"


def test_same_label_enrolled_offline_on_two_devices_makes_one_class(devices, sample_files):
    (ga, a), (gb, b) = devices
    ga.enroll("cup", sample_files["cup"][:2])
    gb.enroll("cup", sample_files["cup"][1:3])   # one shot in common: a duplicate
    converge(a, b)
    assert state(ga) == state(gb) == {"cup": 3}


def test_concurrent_renames_last_in_hub_order_wins(devices, sample_files):
    (ga, a), (gb, b) = devices
    ga.enroll("cup", sample_files["cup"][:1])
    converge(a, b)
    ga.rename("cup", "mug")
    gb.rename("cup", "beaker")
    a.sync_once()
    b.sync_once()   # b's rename reaches the hub last
    converge(a, b)
    assert state(ga) == state(gb) == {"beaker": 1}


def test_rename_onto_a_live_label_merges_into_the_older_class(devices, sample_files):
    (ga, a), (gb, b) = devices
    ga.enroll("cup", sample_files["cup"][:1])
    ga.enroll("mug", sample_files["cup"][1:3])
    converge(a, b)
    gb.remove("cup")
    gb.enroll("tea", sample_files["watch"][:1])   # b now holds no "cup" locally
    b.sync_once()
    a.sync_once()                                 # a sees the delete...
    ga.enroll("cup", sample_files["watch"][1:2])  # ...and re-creates cup: a new class
    gb.rename("mug", "cup")  # onto the label a live class holds on the hub
    converge(a, b)
    assert state(ga) == state(gb)
    assert state(ga)["cup"] == 3 and "mug" not in state(ga)


def test_delete_wins_over_shots_taken_concurrently(devices, sample_files):
    (ga, a), (gb, b) = devices
    ga.enroll("cup", sample_files["cup"][:1])
    converge(a, b)
    ga.remove("cup")
    a.sync_once()
    gb.enroll("cup", sample_files["cup"][1:3])   # b has not seen the delete yet
    converge(a, b)
    assert state(ga) == state(gb) == {}
    gb.enroll("cup", sample_files["cup"][1:3])   # after seeing it: a new class
    converge(a, b)
    assert state(ga) == state(gb) == {"cup": 2}


def test_exactly_once_when_a_push_is_resent(devices, sample_files, hub_dsn):
    (ga, a), (gb, b) = devices
    ga.enroll("cup", sample_files["cup"][:2])
    rows = a.replica.outbox()
    a.sync_once()
    # a crash after the hub committed but before the outbox rows were dropped: re-send them
    with sqlite3.connect(ga.path / "gallery.sqlite") as db:
        db.executemany("INSERT INTO fleet_outbox(id, change_id, base_seq, kind, class_uuid, "
                       "sample_uuid, label, crop, vector, fingerprint, created) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                       [(r.id + 1000, r.change_id, r.base_seq, r.kind, r.class_uuid,
                         r.sample_uuid, r.label, r.crop, r.vector, r.fingerprint) for r in rows])
    head = hub.status(hub_dsn)["head_seq"]
    assert a.sync_once()["pushed"] == len(rows)
    assert hub.status(hub_dsn)["head_seq"] == head
    converge(a, b)
    assert state(gb) == {"cup": 2}


def test_existing_gallery_joins_the_fleet(tmp_path, tiny_model, hub_dsn, sample_files):
    embedder = Embedder(tiny_model, providers="cpu", threads=1)
    with Gallery.create(tmp_path / "old", embedder) as g:
        g.enroll("cup", sample_files["cup"][:2])
    agent = SyncAgent(tmp_path / "old", hub_dsn, embedder, device_name="old")
    try:
        assert agent.sync_once()["pushed"] == 3
        assert hub.status(hub_dsn)["samples"] == 2
    finally:
        agent.stop()


def test_hub_down_means_offline_and_local_enrollment_queues(tmp_path, tiny_model, sample_files):
    dsn = "host=127.0.0.1 port=1 dbname=none user=nobody connect_timeout=2"
    gallery, agent = make_device(tmp_path, "lonely", tiny_model, dsn)
    try:
        gallery.enroll("cup", sample_files["cup"][:2])
        with pytest.raises(FleetError, match="cannot reach"):
            agent.sync_once()
        status = agent.status()
        assert status["state"] == "offline" and status["pending"] == 3
        assert state(gallery) == {"cup": 2}
    finally:
        agent.stop()
        gallery.close()


def test_device_role_can_sync_but_cannot_drop_or_delete(pg_server, hub_dsn, tmp_path,
                                                         tiny_model, sample_files):
    assert fleet_main(["hub", "grant-device", "tledge_device", "--url", hub_dsn]) == 0
    device_dsn = hub_dsn.replace("user=tledge_admin", "user=tledge_device")
    gallery, agent = make_device(tmp_path, "kiosk", tiny_model, device_dsn)
    try:
        gallery.enroll("cup", sample_files["cup"][:1])
        assert agent.sync_once()["pushed"] == 2
    finally:
        agent.stop()
        gallery.close()
    with connect(device_dsn, autocommit=True) as conn:
        for sql in ("DROP TABLE changes", "DELETE FROM samples", "UPDATE classes SET label = 'x'",
                    "INSERT INTO changes(device, kind, payload) VALUES "
                    "(gen_random_uuid(), 'x', '{}')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    assert hub.status(hub_dsn)["samples"] == 1


def test_hub_status_cli_lists_devices(devices, hub_dsn, capsys, sample_files):
    (ga, a), (gb, b) = devices
    ga.enroll("cup", sample_files["cup"][:1])
    a.sync_once()
    b.sync_once()
    assert fleet_main(["hub", "status", "--url", hub_dsn]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert out.startswith("head seq 2") and set(rows) == {"a", "b"}
    assert rows["b"][1] == gb.embedder.fingerprint[:12] and rows["b"][2] == "0"
