"""Fleet scenarios with several REAL device processes against a real PostgreSQL hub:
propagation, a hub outage, kill -9 of a device and of the hub mid-sync, a model rollout.
Convergence is checked by digests of classes and samples (and model fingerprints) on every
device and on the hub."""

from __future__ import annotations

import time

import pytest

from tests import pg
from tests.pg import DeviceProc, wait_until
from tledge.fleet import hub
from tledge.fleet.cli import main as fleet_main

pg_server, pg_db, hub_dsn = pg.pg_server, pg.pg_db, pg.hub_dsn  # fixtures


@pytest.fixture()
def fleet(tmp_path, tiny_model, hub_dsn):
    """Two device processes, A and B, each with its own gallery and sync agent."""
    made: list[DeviceProc] = []

    def spawn(name: str) -> DeviceProc:
        made.append(DeviceProc(tiny_model, tmp_path / name, hub_dsn, name))
        return made[-1]

    yield spawn
    for device in made:
        device.close()


def converged(dsn: str, *devices: DeviceProc) -> bool:
    try:
        want = hub.hub_digest(dsn)
    except Exception:  # noqa: BLE001 - the hub may still be restarting
        return False
    states = [d.call("digest") for d in devices]
    return all(s["digest"] == want and s["pending"] == 0 for s in states)


def labels(device: DeviceProc) -> dict[str, int]:
    return device.call("labels")["samples"]


def test_enroll_rename_delete_propagate_between_processes(fleet, hub_dsn, sample_files,
                                                          query_files):
    a, b = fleet("a"), fleet("b")
    for device in (a, b):
        device.call("start")
    a.call("enroll", label="cup", files=[str(p) for p in sample_files["cup"][:2]])
    wait_until(lambda: b.call("recognize", file=str(query_files["cup"][0]))["label"] == "cup",
               timeout=30, what="B to recognise A's cup")
    b.call("rename", old="cup", new="mug")
    wait_until(lambda: labels(a) == {"mug": 2}, timeout=30, what="the rename to reach A")
    a.call("remove", label="mug")
    wait_until(lambda: labels(b) == {}, timeout=30, what="the delete to reach B")
    assert wait_until(lambda: converged(hub_dsn, a, b), timeout=30, what="convergence")
    status = b.call("status")
    assert status["state"] == "connected" and status["lag"] == 0


def test_hub_outage_while_a_enrolls_and_b_deletes(fleet, hub_dsn, pg_server, sample_files):
    a, b = fleet("a"), fleet("b")
    for device in (a, b):
        device.call("start")
    a.call("enroll", label="cup", files=[str(p) for p in sample_files["cup"][:2]])
    wait_until(lambda: labels(b) == {"cup": 2}, timeout=30, what="B to get the cup")
    pg_server.stop("fast")
    try:
        a.call("enroll", label="watch", files=[str(p) for p in sample_files["watch"][:3]])
        a.call("enroll", label="cup", files=[str(sample_files["cup"][2])])
        b.call("remove", label="cup")
        wait_until(lambda: a.call("status")["state"] == "offline", timeout=30,
                   what="A to notice the hub is down")
        wait_until(lambda: a.call("status")["pending"] == 5, timeout=10,
                   what="A's status to count its 5 queued changes")
        assert labels(a) == {"cup": 3, "watch": 3}   # A keeps enrolling while offline
    finally:
        pg_server.start()
    assert wait_until(lambda: converged(hub_dsn, a, b), timeout=60, what="convergence")
    # B's delete reached the hub first or after A's shot: either way the delete wins.
    assert labels(a) == labels(b) == {"watch": 3}
    assert hub.status(hub_dsn)["samples"] == 3


def test_kill9_of_a_device_and_of_the_hub_mid_sync(fleet, hub_dsn, pg_server, sample_files,
                                                   tmp_path, tiny_model):
    a, b = fleet("a"), fleet("b")
    files = [str(p) for cls in ("cup", "watch", "accordion") for p in sample_files[cls][:3]]
    for i in range(6):
        a.call("enroll", label=f"class{i}", files=files[i:i + 3])
    a.send("sync")
    time.sleep(0.3)
    a.kill9()                                  # killed while pushing, at some point
    a = fleet("a")                             # the same gallery, a new process
    b.call("enroll", label="shared", files=files[6:9])
    b.send("sync")
    time.sleep(0.15)
    pg_server.kill9()                          # the hub dies mid-transaction
    b.proc.stdout.readline()                   # B answers (an error, or done before the kill)
    pg_server.restart_after_crash()
    for _ in range(2):
        for device in (a, b):
            device.call("sync")
    assert converged(hub_dsn, a, b)
    want = {f"class{i}": 3 for i in range(6)} | {"shared": 3}
    assert labels(a) == labels(b) == want
    assert hub.status(hub_dsn)["samples"] == 21      # nothing lost, nothing duplicated


def test_model_rollout_reembeds_every_sample(fleet, hub_dsn, sample_files, other_model):
    from tledge.fleet.dsn import connect
    from tledge.runtime import Embedder

    a, b = fleet("a"), fleet("b")
    for cls in ("cup", "watch"):
        a.call("enroll", label=cls, files=[str(p) for p in sample_files[cls][:2]])
    a.call("sync")
    b.call("sync")
    new_fp = Embedder(other_model, providers="cpu").fingerprint
    assert fleet_main(["hub", "rollout", "--url", hub_dsn, "--model", str(other_model)]) == 0
    assert a.call("sync")["rolled_out"] and b.call("sync")["rolled_out"]
    for device in (a, b):
        state = device.call("digest")
        assert state["fingerprint"] == new_fp
        # an enrolled shot, embedded by the new model, finds its own class again
        assert device.call("recognize", file=str(sample_files["cup"][0]))["score"] > 0.99
    assert converged(hub_dsn, a, b)
    with connect(hub_dsn) as conn:
        fps = dict(conn.execute("SELECT fingerprint, count(*) FROM embeddings GROUP BY 1"))
    assert fps[new_fp] == 4
    assert {d["fingerprint"] for d in hub.status(hub_dsn)["devices"]} == {new_fp}
