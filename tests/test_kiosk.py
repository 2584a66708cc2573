"""The kiosk service: debounced events, the HTTP API and its token, faults and signals."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tledge.errors import SourceError, TledgeError
from tledge.kiosk import Debouncer, KioskConfig, KioskService
from tledge.kiosk.app import read_token
from tledge.kiosk.hub import EventHub
from tledge.kiosk.server import KioskServer
from tledge.runtime import Gallery
from tledge.runtime.sources import open_source

from .conftest import write_clip

TOKEN = "k" * 24


def test_debouncer_ignores_flicker_and_reports_each_change_once():
    d = Debouncer(stable_frames=3)
    stream = ["cup", "cup", "watch", "cup", "cup", "cup", "cup", "cup", None, None, None, None]
    reports = [(i, d.push(label, 0.9, 5.0)) for i, label in enumerate(stream)]
    fired = [(i, r.label) for i, r in reports if r is not None]
    assert fired == [(5, "cup"), (10, None)]
    assert d.reported.frames == 3 and d.reported.latency_ms == pytest.approx(5.0)
    d.reset()
    assert [d.push("cup", 1.0, 1.0) for _ in range(3)][-1].label == "cup"
    with pytest.raises(ValueError):
        Debouncer(stable_frames=0)


@pytest.fixture()
def clip(tmp_path, query_files, unknown_files):
    """cup (8 frames), watch (8), an unknown clutter photo (8): a real MJPG video."""
    return write_clip(tmp_path / "kiosk.avi",
                      [query_files["cup"][0], query_files["watch"][0], unknown_files[0]], 8)


def _enrolled(path: Path, embedder, query_files, threshold: float) -> Path:
    with Gallery.create(path, embedder, threshold=threshold) as gallery:
        for label in ("cup", "watch"):
            gallery.enroll(label, [query_files[label][0]])
    return path


@pytest.fixture()
def kiosk_gallery(tmp_path, embedder, query_files):
    """cup and watch enrolled with the tiny model (which tells them apart, but is too weak
    to call clutter unknown)."""
    return _enrolled(tmp_path / "gallery", embedder, query_files, 0.9)


def _service(tiny_model, gallery, source, events, **cfg) -> KioskService:
    config = KioskConfig(model=tiny_model, gallery=gallery, source=str(source), providers="cpu",
                         **{"stable_frames": 3, **cfg})
    return KioskService(config, EventHub([events.append]))


@pytest.mark.slow
def test_video_gives_debounced_events_with_latency(mobilenet_model, query_files, clip, tmp_path):
    from tledge.runtime import Embedder

    gallery = _enrolled(tmp_path / "g", Embedder(mobilenet_model, providers="cpu"), query_files,
                        threshold=0.65)
    events: list[dict] = []
    service = _service(mobilenet_model, gallery, clip, events)
    assert service.run() == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "stopped"
    assert events[-1]["reason"] == "end of source" and events[-1]["frames"] == 24
    rec = [e for e in events if e["event"] == "recognition"]
    assert [e["label"] for e in rec] == ["cup", "watch", None]
    assert [e["frame"] for e in rec] == [2, 10, 18]  # the third frame of each scene
    assert all(e["latency_ms"] > 0 and e["stable_frames"] == 3 for e in rec)
    assert rec[0]["known"] and not rec[2]["known"] and rec[2]["score"] < 0.65
    assert all(e["timestamp"].endswith("Z") for e in events)


def test_max_frames_and_every_frame(tiny_model, kiosk_gallery, clip):
    events: list[dict] = []
    service = _service(tiny_model, kiosk_gallery, clip, events, max_frames=5, every_frame=True)
    service.run()
    assert sum(e["event"] == "frame" for e in events) == 5
    assert events[-1]["reason"] == "max frames"


class _Flaky:
    """A source factory whose device is missing for the first ``failures`` opens."""

    def __init__(self, failures: int) -> None:
        self.failures, self.opens = failures, 0

    def __call__(self, spec, loop=False):
        self.opens += 1
        if self.opens <= self.failures:
            raise SourceError(f"camera {spec} could not be opened")
        return open_source(spec, loop=loop)


def test_lost_source_is_retried_with_back_off_then_recovered(tiny_model, kiosk_gallery, clip):
    events: list[dict] = []
    config = KioskConfig(model=tiny_model, gallery=kiosk_gallery, source=str(clip),
                         providers="cpu", stable_frames=3, retry_initial=0.05, retry_max=0.15)
    flaky = _Flaky(failures=3)
    service = KioskService(config, EventHub([events.append]), source_factory=flaky)
    service.run()
    lost = [e for e in events if e["event"] == "source_lost"]
    assert [e["retry_in_s"] for e in lost] == [0.05, 0.1, 0.15]
    restored = [e for e in events if e["event"] == "source_restored"]
    assert len(restored) == 1 and restored[0]["down_s"] >= 0.25
    assert [e["label"] for e in events if e["event"] == "recognition"] == ["cup", "watch"]
    assert service.status()["source_lost"] == 3


def test_a_video_that_appears_later_is_picked_up(tiny_model, kiosk_gallery, clip, tmp_path):
    events: list[dict] = []
    late = tmp_path / "late.avi"
    config = KioskConfig(model=tiny_model, gallery=kiosk_gallery, source=str(late),
                         providers="cpu", stable_frames=3, retry_initial=0.05, retry_max=0.1)
    service = KioskService(config, EventHub([events.append]))
    timer = threading.Timer(0.6, shutil.copy, (clip, late))
    timer.start()
    service.run()
    timer.join()
    kinds = [e["event"] for e in events]
    assert "source_lost" in kinds and "source_restored" in kinds
    assert kinds.index("source_restored") < kinds.index("recognition")


def _get(url: str, data: bytes | None = None, headers: dict | None = None):
    headers = {**({"Content-Type": "application/json"} if data is not None else {}),
               **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@pytest.fixture()
def live(tiny_model, kiosk_gallery, clip):
    """A looping kiosk with its HTTP API on a free localhost port, enrollment enabled."""
    events: list[dict] = []
    config = KioskConfig(model=tiny_model, gallery=kiosk_gallery, source=str(clip),
                         providers="cpu", stable_frames=3, loop=True)
    hub = EventHub([events.append])
    service = KioskService(config, hub)
    server = KioskServer(("127.0.0.1", 0), service, hub, token=TOKEN)
    server.start()
    thread = threading.Thread(target=service.run)
    thread.start()
    yield server, service, events
    service.stop("test over")
    thread.join(30)
    server.shutdown()
    server.server_close()


def _wait(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_http_health_status_last_and_event_stream(live):
    server, service, events = live
    assert _wait(lambda: _get(server.url + "/health")[0] == 200)
    code, status = _get(server.url + "/status")
    assert code == 200 and status["state"] == "running" and status["enroll_enabled"]
    assert _wait(lambda: _get(server.url + "/last")[0] == 200)
    assert _get(server.url + "/last")[1]["event"] == "recognition"
    assert _get(server.url + "/nope")[0] == 404
    with urllib.request.urlopen(server.url + "/events", timeout=10) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        data = []
        while len(data) < 2:
            line = stream.readline().decode()
            if line.startswith("data: "):
                data.append(json.loads(line[6:]))
    assert all(e["event"] == "recognition" for e in data)
    assert {e["label"] for e in data} <= {"cup", "watch", None}


def test_enrollment_needs_the_token(live, sample_files):
    server, service, events = live
    jpeg = base64.b64encode(sample_files["mug"] if "mug" in sample_files else next(iter(sample_files.values()))[0].read_bytes()).decode()
    body = json.dumps({"label": "mug", "images": [jpeg]}).encode()
    url = server.url + "/enroll"
    assert _get(url, body)[0] == 401
    assert _get(url, body, {"Authorization": "Bearer " + "x" * 24})[0] == 401
    bad = json.dumps({"label": "mug", "images": ["not base64!"]}).encode()
    assert _get(url, bad, {"Authorization": f"Bearer {TOKEN}"})[0] == 400
    code, event = _get(url, body, {"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and event["event"] == "enrolled" and event["label"] == "mug"
    assert event["added"] == 1 and event["classes"] == 3
    code, event = _get(url, json.dumps({"label": "scene"}).encode(),
                       {"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and event["label"] == "scene"  # the current camera frame
    code, err = _get(url, json.dumps({"label": ""}).encode(),
                     {"Authorization": f"Bearer {TOKEN}"})
    assert code == 422 and "label" in err["error"]


def test_enrollment_is_refused_when_not_enabled(tiny_model, kiosk_gallery, clip):
    config = KioskConfig(model=tiny_model, gallery=kiosk_gallery, source=str(clip))
    hub = EventHub()
    server = KioskServer(("127.0.0.1", 0), KioskService(config, hub), hub, token=None)
    server.start()
    try:
        assert _get(server.url + "/enroll", b'{"label": "x"}')[0] == 403
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(TledgeError, match="at least 16"):
        KioskServer(("127.0.0.1", 0), KioskService(config, hub), hub, token="short")


def test_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TLEDGE_KIOSK_TOKEN", raising=False)
    with pytest.raises(TledgeError, match="openssl rand"):
        read_token(None)
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert read_token(tmp_path / "token") == TOKEN
    monkeypatch.setenv("TLEDGE_KIOSK_TOKEN", "e" * 20)
    assert read_token(None) == "e" * 20


def kiosk_command(python: str | Path, model, gallery, source, *extra) -> list[str]:
    return [str(python), "-m", "tledge.cli", "kiosk", "--model", str(model), "--gallery",
            str(gallery), "--source", str(source), "--providers", "cpu", "--stable", "3", *extra]


def test_sigterm_stops_the_cli_cleanly(tiny_model, kiosk_gallery, clip):
    cmd = kiosk_command(sys.executable, tiny_model, kiosk_gallery, clip, "--loop", "--port", "0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        while not any('"recognition"' in line for line in lines):
            line = proc.stdout.readline()
            assert line, f"kiosk exited early: {proc.stderr.read()}"
            lines.append(line)
        started = json.loads(lines[0])
        assert started["event"] == "started" and started["http"].startswith("http://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    last = json.loads(rest.strip().splitlines()[-1])
    assert last["event"] == "stopped" and last["reason"] == "SIGTERM"


def test_cli_refuses_enrollment_without_a_token(tiny_model, kiosk_gallery, clip, monkeypatch,
                                                capsys):
    from tledge.cli import main

    monkeypatch.delenv("TLEDGE_KIOSK_TOKEN", raising=False)
    args = ["kiosk", "--model", str(tiny_model), "--gallery", str(kiosk_gallery), "--source",
            str(clip), "--allow-enroll"]
    assert main(args) == 1
    assert "token of at least 16 characters" in capsys.readouterr().err
    assert main(args + ["--no-http"]) == 1
    assert "drop --no-http" in capsys.readouterr().err


# -- events never block the loop (stdout) -------------------------------------------------------
def test_an_unread_stdout_never_stalls_the_kiosk(tiny_model, kiosk_gallery, clip, tmp_path):
    cmd = kiosk_command(sys.executable, tiny_model, kiosk_gallery, clip, "--loop",
                        "--every-frame", "--exit-after", "5", "--port", "0")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        try:
            code = proc.wait(timeout=90)  # nobody reads stdout while it runs
        finally:
            proc.kill()
    assert code == 0, (tmp_path / "stderr.txt").read_text()
    lines = proc.stdout.read().decode().splitlines()
    proc.stdout.close()
    assert json.loads(lines[0])["event"] == "started"
    assert len(lines) > 50  # it kept publishing frames until the pipe was full


def _status(url: str) -> dict:
    try:
        return _get(url + "/status")[1] or {}
    except OSError:  # not listening (yet, or any more)
        return {}


def test_a_closed_stdout_does_not_kill_the_kiosk(tiny_model, kiosk_gallery, clip, tmp_path):
    cmd = kiosk_command(sys.executable, tiny_model, kiosk_gallery, clip, "--loop",
                        "--every-frame", "--exit-after", "8", "--port", "0")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        try:
            started = json.loads(proc.stdout.readline())
            proc.stdout.close()  # the reader goes away
            url = started["http"]
            assert _wait(lambda: _status(url).get("stdout_closed") is True)
            assert _get(url + "/health")[0] == 200
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
    log = (tmp_path / "stderr.txt").read_text()
    assert code == 0, log
    assert log.count("stdout is closed") == 1 and "Traceback" not in log


def test_a_full_stdout_queue_drops_and_counts_events(caplog):
    from tledge.kiosk.sinks import QueuedSink

    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as out:
        sink = QueuedSink(out, capacity=64)
        hub = EventHub([sink])
        for i in range(3000):  # the pipe holds ~64 KB: the writer blocks, the queue fills
            hub.publish({"event": "frame", "frame": i, "pad": "x" * 100})
        assert sink.dropped > 0 and hub.stats()["events_dropped"] == sink.dropped
        data, reported = b"", 0
        while reported < sink.dropped:  # the writer reports every drop once it catches up
            ready, _, _ = select.select([read_fd], [], [], 10)
            assert ready, f"only {reported} of {sink.dropped} drops reported"
            data += os.read(read_fd, 1 << 16)
            lines = [json.loads(line) for line in data.split(b"\n")[:-1]]
            reports = [e for e in lines if e["event"] == "events_dropped"]
            reported = sum(e["count"] for e in reports)
        assert reports[-1]["total"] == sink.dropped
        assert len(lines) - len(reports) + sink.dropped == 3000  # each event written or counted
        os.close(read_fd)  # the reader goes away: one log line, nothing raised
        with caplog.at_level("WARNING", logger="tledge"):
            for i in range(10):
                hub.publish({"event": "frame", "frame": i})
            assert _wait(lambda: sink.broken, timeout=10)
            hub.publish({"event": "frame", "frame": -1})
        assert caplog.text.count("stdout is closed") == 1
        sink.close()


# -- numbers are range-checked ---------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("threshold", 2.0), ("threshold", float("nan")), ("max_frames", 0), ("threads", 0),
    ("stable_frames", 0), ("smoothing", 0), ("exit_after", 0.0), ("exit_after", float("inf")),
    ("stale_after", -1.0), ("retry_max", float("nan")), ("roi", (0, 0, 4, 4))])
def test_config_refuses_out_of_range_numbers(field, value, tmp_path):
    config = KioskConfig(model=tmp_path / "m.onnx", gallery=tmp_path / "g", source="0",
                         **{field: value})
    with pytest.raises(TledgeError, match="must"):
        config.validate()


@pytest.mark.parametrize("args", [
    ["--threshold", "2"], ["--threshold", "nan"], ["--max-frames", "0"], ["--threads", "0"],
    ["--stable", "0"], ["--smoothing", "0"], ["--exit-after", "0"], ["--retry-max", "inf"],
    ["--stale-after", "-1"], ["--port", "65536"], ["--port", "-1"],
    ["--allowed-host", "http://evil.example"], ["--idle-timeout", "0"]])
def test_cli_range_checks_kiosk_numbers(args, tmp_path, capsys):
    from tledge.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["kiosk", "--model", str(tmp_path / "m.onnx"), "--gallery", str(tmp_path / "g"),
              "--source", str(tmp_path / "none.avi"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert args[0] in err and ("range" in err or "finite" in err or "not a host" in err), err


def test_cli_refuses_a_remote_address_without_allow_remote(tiny_model, kiosk_gallery, clip,
                                                           capsys):
    from tledge.cli import main

    args = ["kiosk", "--model", str(tiny_model), "--gallery", str(kiosk_gallery), "--source",
            str(clip), "--host", "192.0.2.1", "--port", "0"]
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: even a missing check binds nothing
    assert main(args) == 1
    assert "--allow-remote" in capsys.readouterr().err
