"""Two real `tledge kiosk --hub` processes: enroll over HTTP on one, the other recognises it
(the walk-through in docs/fleet.md, "Set up a fleet", end to end)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import urllib.request

from tests import pg
from tests.conftest import write_clip
from tests.pg import free_port, wait_until

pg_server, pg_db, hub_dsn = pg.pg_server, pg.pg_db, pg.hub_dsn  # fixtures

TOKEN = "fleet-kiosk-token-0123456789"


class Kiosk:
    def __init__(self, tmp_path, name, model, clip, dsn, enroll=False):
        self.port, self.frames, self.lines = free_port(), [], []
        cmd = [sys.executable, "-m", "tledge.cli", "kiosk", "--model", str(model), "--gallery",
               str(tmp_path / name), "--source", str(clip), "--loop", "--every-frame",
               "--port", str(self.port), "--hub", dsn, "--device-name", name,
               "--exit-after", "120"]
        env = None
        if enroll:
            cmd += ["--allow-enroll"]
            import os
            env = dict(os.environ, TLEDGE_KIOSK_TOKEN=TOKEN)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            event = json.loads(line)
            self.lines.append(event)
            if event["event"] == "frame":
                self.frames.append(event)

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def up(self):
        try:
            return self.get("/health")["status"] == "ok"
        except OSError:
            return False

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.stderr.read()


def test_enroll_on_one_kiosk_is_recognised_by_the_other(tmp_path, tiny_model, hub_dsn,
                                                        sample_files, query_files):
    clip = write_clip(tmp_path / "cup.avi", query_files["cup"], 5)
    a = Kiosk(tmp_path, "kiosk-a", tiny_model, clip, hub_dsn, enroll=True)
    b = Kiosk(tmp_path, "kiosk-b", tiny_model, clip, hub_dsn)
    try:
        assert wait_until(lambda: a.up() and b.up(), 90), a.close() + b.close()
        assert all(f["candidate"] is None for f in b.frames)          # empty galleries
        body = json.dumps({"label": "cup", "images": [
            base64.b64encode(p.read_bytes()).decode() for p in sample_files["cup"]]}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{a.port}/enroll", data=body, method="POST",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read())["added"] == len(sample_files["cup"])
        enrolled = time.time()
        assert wait_until(lambda: any(f["candidate"] == "cup" and f["time"] > enrolled
                                      for f in b.frames[-20:]), 30), b.get("/status")
        health = b.get("/health")
        assert health["sync"]["state"] == "connected" and health["sync"]["pending"] == 0
        status = b.get("/status")["sync"]
        assert status["device_name"] == "kiosk-b" and status["lag"] == 0
    finally:
        a.close()
        b.close()


def test_a_running_kiosk_follows_a_rollout_and_a_restart_keeps_it(tmp_path, tiny_model,
                                                                  other_model, hub_dsn,
                                                                  sample_files, query_files):
    from tledge.fleet import hub
    from tledge.kiosk.fleet_link import fleet_model
    from tledge.runtime import Embedder, Gallery

    with Gallery.create(tmp_path / "kiosk-a", Embedder(tiny_model)) as g:
        g.enroll("cup", sample_files["cup"])
    clip = write_clip(tmp_path / "cup.avi", query_files["cup"], 5)
    a = Kiosk(tmp_path, "kiosk-a", tiny_model, clip, hub_dsn)
    try:
        assert wait_until(a.up, 90)
        new_fp = hub.rollout(hub_dsn, other_model)
        changed = wait_until(lambda: [e for e in a.lines if e["event"] == "model_changed"], 60)
        assert changed[0]["fingerprint"] == new_fp and changed[0]["classes"] == 1
        moved = time.time()
        assert wait_until(lambda: any(f["candidate"] == "cup" and f["time"] > moved
                                      for f in a.frames[-10:]), 30)
        assert a.get("/health")["status"] == "ok"
    finally:
        stderr = a.close()
    assert a.proc.returncode == 0, stderr
    # restarted with its original --model (as systemd would), it opens the rolled-out one
    chosen = fleet_model(tmp_path / "kiosk-a", tiny_model)
    assert chosen != tiny_model and Embedder(chosen).fingerprint == new_fp
    with Gallery.open(tmp_path / "kiosk-a", Embedder(chosen)) as g:
        assert g.labels() == ["cup"]
