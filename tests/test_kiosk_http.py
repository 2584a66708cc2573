"""The kiosk's HTTP API under hostile and clumsy clients, over real sockets on 127.0.0.1:
idle and trickling connections, smuggled bodies, failures inside handlers, foreign Host and
Origin headers, event streams nobody reads, and enrollment that must never stall frames."""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tledge.errors import TledgeError
from tledge.kiosk import KioskConfig, KioskService
from tledge.kiosk.app import start_server
from tledge.kiosk.http_guard import HttpLimits, check_bind
from tledge.kiosk.hub import EventHub
from tledge.kiosk.server import KioskServer
from tledge.runtime import Gallery

from .conftest import write_clip

TOKEN = "k" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
ENROLL_STATUSES = {200, 202, 400, 401, 403, 413, 415, 422, 429, 503}


# -- helpers: raw HTTP/1.1 over one socket --------------------------------------------------
def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None,
            host: str | None = "127.0.0.1", timeout: float = 20.0) -> tuple[int, dict, object]:
    """One request on a fresh connection: (status, headers, parsed JSON body or None)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw_request(method, path, body, headers, host))
        return read_response(sock.makefile("rb"))


def raw_request(method: str, path: str, body: bytes = b"", headers: dict | None = None,
                host: str | None = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1"] + ([f"Host: {host}"] if host else [])
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def read_response(stream) -> tuple[int, dict, object]:
    status_line = stream.readline()
    if not status_line:
        return 0, {}, None  # the server closed the connection
    status = int(status_line.split()[1])
    headers = {}
    while (line := stream.readline().decode("latin-1").strip()):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    data = stream.read(int(headers.get("content-length", 0)))
    return status, headers, json.loads(data) if data else None


def wait_for(predicate, timeout: float = 30.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture()
def clip(tmp_path, query_files):
    return write_clip(tmp_path / "kiosk.avi", [query_files["cup"][0], query_files["watch"][0]], 6)


@pytest.fixture()
def gallery_dir(tmp_path, embedder, query_files):
    with Gallery.create(tmp_path / "gallery", embedder, threshold=0.9) as gallery:
        for label in ("cup", "watch"):
            gallery.enroll(label, [query_files[label][0]])
    return tmp_path / "gallery"


@pytest.fixture()
def kiosk(tiny_model, gallery_dir, clip):
    """Start a looping kiosk with its API on a free 127.0.0.1 port: ``kiosk(**limits)``."""
    started = []

    def start(allowed_hosts=(), enroll_queue: int = 4, every_frame: bool = False, **limits):
        events: list[dict] = []
        hub = EventHub([events.append])
        config = KioskConfig(model=tiny_model, gallery=gallery_dir, source=str(clip),
                             providers="cpu", stable_frames=3, loop=True,
                             enroll_queue=enroll_queue, every_frame=every_frame)
        service = KioskService(config, hub)
        server = KioskServer(("127.0.0.1", 0), service, hub, token=TOKEN,
                             limits=HttpLimits(**limits), allowed_hosts=allowed_hosts)
        server.start()
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        started.append((service, server, thread))
        assert wait_for(lambda: request(server.port, "GET", "/health")[0] == 200)
        return server, service, hub

    yield start
    for service, server, thread in started:
        service.stop("test over")
        thread.join(30)
        server.close()


@pytest.fixture()
def idle_server(tiny_model, gallery_dir, clip):
    """The API of a kiosk that is not running (no loop thread): deterministic file handles."""
    hub = EventHub()
    config = KioskConfig(model=tiny_model, gallery=gallery_dir, source=str(clip))
    server = KioskServer(("127.0.0.1", 0), KioskService(config, hub), hub, token=TOKEN,
                         limits=HttpLimits(idle_timeout=2.0))
    server.start()
    yield server
    server.close()


def jpeg_b64(path: Path, width: int, quality: int = 85) -> str:
    img = Image.open(path).convert("RGB")
    img = img.resize((width, max(8, width * img.height // img.width)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode()


def enroll_body(label: str, images: list[str] | None = None) -> bytes:
    return json.dumps({"label": label, **({"images": images} if images else {})}).encode()


# -- connections -----------------------------------------------------------------------------
def test_idle_and_trickling_clients_neither_block_health_nor_leak(idle_server):
    port = idle_server.port
    baseline = open_fds()
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    trickling = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    stop = threading.Event()

    def trickle() -> None:  # one byte per connection per second: never a complete request
        for i in range(60):
            for sock in trickling:
                try:
                    sock.send(b"GET /health HTTP/1.1\r\n"[i % 22:i % 22 + 1])
                except OSError:
                    pass
            if stop.wait(1.0):
                return

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        status, _, body = request(port, "GET", "/health", timeout=10)
        assert status == 503 and body["state"] == "starting"  # answered, though not running
        for sock in silent + trickling:  # every one is closed by the server, trickling or not
            sock.settimeout(20)
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
    finally:
        stop.set()
        feeder.join(5)
        for sock in silent + trickling:
            sock.close()
    assert request(port, "GET", "/status")[0] == 200
    assert wait_for(lambda: open_fds() <= baseline, timeout=20), (open_fds(), baseline)


def test_a_rejected_body_is_never_read_as_the_next_request(idle_server):
    smuggled = b"GET /evil HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", idle_server.port), timeout=20) as sock:
        sock.sendall(raw_request("POST", "/enroll", smuggled,
                                 {"Authorization": "Bearer wrong", "Content-Type":
                                  "application/json"}) + raw_request("GET", "/status"))
        stream = sock.makefile("rb")
        status, _, body = read_response(stream)
        assert status == 401 and "token" in body["error"]
        status, _, body = read_response(stream)
    assert status == 0 or (status == 200 and "frames" in body)  # /status, never /evil


def test_oversized_requests_get_json_errors(idle_server):
    port = idle_server.port
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 1000000000\r\n\r\n{\"la")
        status, headers, body = read_response(sock.makefile("rb"))
    assert status == 413 and headers["content-type"] == "application/json" and body["error"]
    status, headers, body = request(port, "GET", "/" + "a" * 70_000)
    assert status == 431 and body["error"].startswith("Request Header Fields Too Large")
    status, _, body = request(port, "PUT", "/health")
    assert status == 405 and body["error"]
    status, _, body = request(port, "GET", "/nope")
    assert status == 404 and "GET /health" in body["endpoints"]


# -- every request answered --------------------------------------------------------------------
def test_every_failure_is_answered_with_one_line_of_json(kiosk, monkeypatch, caplog):
    server, service, _ = kiosk()
    port = server.port
    deep = b'{"label": "x", "images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, _, body = request(port, "POST", "/enroll", deep, AUTH)
    assert status == 400 and "nested too deeply" in body["error"]
    status, _, body = request(port, "POST", "/enroll", b'{"label": "cup\\ud800"}', AUTH)
    assert status == 422 and "surrogate" in body["error"]
    status, _, body = request(port, "POST", "/enroll", b'{"label": ' + b"9" * 5000 + b"}", AUTH)
    assert status == 400 and "not valid JSON" in body["error"]

    def full_disk(*args, **kwargs):  # fault injection: the disk filled up mid-enrollment
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(service.gallery, "enroll", full_disk)
    with caplog.at_level(logging.ERROR, logger="tledge"):
        status, _, body = request(port, "POST", "/enroll", enroll_body("mug"), AUTH)
    assert status == 507 and "No space left on device" in body["error"]
    assert "\n" not in body["error"] and "Traceback" in caplog.text

    def full_database(*args, **kwargs):  # what the gallery raises when SQLite finds it full
        from tledge.runtime import gallery_db

        raise gallery_db.translate(service.gallery.store.path,
                                   sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(service.gallery, "enroll", full_database)
    status, _, body = request(port, "POST", "/enroll", enroll_body("mug"), AUTH)
    assert status == 507 and "disk is full" in body["error"]

    def out_of_memory():
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(service, "status", out_of_memory)
    status, _, body = request(port, "GET", "/status")
    assert status == 500 and body == {"error": "internal error (MemoryError); see the "
                                               "kiosk's log"}
    monkeypatch.undo()
    assert request(port, "GET", "/health")[0] == 200


# -- Host and Origin, binding ------------------------------------------------------------------
def test_only_this_machine_and_allowed_hosts_are_served(kiosk):
    server, _, _ = kiosk(allowed_hosts=["kiosk.local"])
    port = server.port
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "[::1]:9",
                 "kiosk.local", f"KIOSK.local:{port}"):
        assert request(port, "GET", "/health", host=host)[0] == 200, host
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]"):
        status, _, body = request(port, "GET", "/last", host=host)
        assert status == 421 and "--allowed-host" in body["error"], host
    assert request(port, "GET", "/health", host=None)[0] == 400
    status, _, body = request(port, "POST", "/enroll", enroll_body("mug"),
                              {**AUTH, "Origin": "http://evil.example"})
    assert status == 403 and "cross-site" in body["error"]
    assert request(port, "GET", "/events", headers={"Origin": "null"})[0] == 403
    assert request(port, "GET", "/health", headers={"Origin": "http://localhost:3000"})[0] == 200


def test_a_non_loopback_address_needs_allow_remote(tiny_model, gallery_dir, clip, caplog):
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        check_bind(host, allow_remote=False, allow_enroll=True)
    for host in ("0.0.0.0", "::", "", "192.168.1.20", "kiosk.local"):
        with pytest.raises(TledgeError, match="--allow-remote"):
            check_bind(host, allow_remote=False, allow_enroll=False)
    with caplog.at_level(logging.WARNING, logger="tledge"):
        check_bind("0.0.0.0", allow_remote=True, allow_enroll=True)
    assert "bearer token travels unencrypted" in caplog.text
    hub = EventHub()  # the refusal comes before binding; TEST-NET-1 could never be bound here
    service = KioskService(KioskConfig(model=tiny_model, gallery=gallery_dir, source=str(clip)),
                           hub)
    with pytest.raises(TledgeError, match="--allow-remote"):
        start_server(service, hub, ("192.0.2.1", 0), TOKEN)


# -- event streams -----------------------------------------------------------------------------
def open_stream(port: int, rcvbuf: int | None = None) -> tuple[socket.socket, int]:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    sock.sendall(raw_request("GET", "/events"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    return sock, int(head.split()[1])


def test_event_streams_are_bounded_and_health_still_answers(kiosk):
    server, _, hub = kiosk(max_subscribers=2, every_frame=True)
    first, s1 = open_stream(server.port)
    second, s2 = open_stream(server.port)
    assert (s1, s2) == (200, 200)
    status, headers, body = request(server.port, "GET", "/events")
    assert status == 503 and "event streams" in body["error"] and headers["retry-after"]
    assert request(server.port, "GET", "/health")[0] == 200
    assert b"data: " in first.recv(65536)
    first.close()  # the server notices at its next write, then frees the slot
    assert wait_for(lambda: hub.stats()["subscribers"] == 1)
    third, s3 = open_stream(server.port)
    assert s3 == 200
    server.close()  # shutting down ends every stream
    for sock in (second, third):
        assert wait_for(lambda s=sock: not s.recv(65536), timeout=20)
        sock.close()


def test_a_quiet_stream_gets_keep_alives_and_ends_on_shutdown(tiny_model, gallery_dir, clip):
    hub = EventHub()
    config = KioskConfig(model=tiny_model, gallery=gallery_dir, source=str(clip))
    server = KioskServer(("127.0.0.1", 0), KioskService(config, hub), hub,
                         limits=HttpLimits(keepalive=0.3))
    server.start()
    try:
        sock, status = open_stream(server.port)
        received = b""
        while received.count(b": keep-alive") < 2:  # no events at all: comments keep it open
            chunk = sock.recv(4096)
            assert chunk, "the stream ended early"
            received += chunk
    finally:
        server.close()
    assert status == 200 and wait_for(lambda: not sock.recv(4096), timeout=20)
    sock.close()


def test_a_stream_nobody_reads_is_dropped_without_blocking(kiosk):
    server, service, hub = kiosk(idle_timeout=2.0)
    stalled, status = open_stream(server.port, rcvbuf=4096)
    assert status == 200 and hub.stats()["subscribers"] == 1
    frames = service.status()["frames"]
    for i in range(120):  # ~8 MB of events at a reader that reads nothing
        hub.publish({"event": "padding", "n": i, "pad": "x" * 65536})
    assert wait_for(lambda: hub.stats()["subscribers"] == 0, timeout=30)
    assert wait_for(lambda: service.status()["frames"] > frames + 5)
    reader, status = open_stream(server.port)
    assert status == 200
    reader.close()
    stalled.close()


# -- enrollment ---------------------------------------------------------------------------------
def test_enrollment_runs_beside_the_loop_and_answers_202_with_a_job(kiosk, sample_files):
    server, service, _ = kiosk(max_images=300, request_timeout=0.1)
    files = [f for paths in sample_files.values() for f in paths]
    images = [jpeg_b64(files[i % len(files)], 320 + 8 * (i // len(files))) for i in range(300)]
    status, headers, job = request(server.port, "POST", "/enroll", enroll_body("big", images),
                                   AUTH)
    assert status == 202 and headers["location"] == f"/enroll/{job['job']}"
    running = []  # (frames, health) sampled while the enrollment runs
    while True:
        status, _, doc = request(server.port, "GET", headers["location"], headers=AUTH)
        assert status == 200
        if doc["state"] not in ("queued", "running"):
            break
        if doc["state"] == "running":
            running.append((request(server.port, "GET", "/status")[2]["frames"],
                            request(server.port, "GET", "/health")[0]))
    assert doc["state"] == "done" and doc["label"] == "big", doc
    assert doc["added"] + doc.get("duplicates", 0) == 300 and doc["failed"] == []
    assert len(running) >= 2 and {h for _, h in running} == {200}
    assert running[-1][0] > running[0][0]  # frames kept coming while it enrolled


def test_a_retry_never_duplicates(kiosk, sample_files):
    server, service, _ = kiosk()
    images = [jpeg_b64(sample_files["cup"][0], 200), jpeg_b64(sample_files["cup"][1], 200)]
    body = enroll_body("mug", images)
    keyed = {**AUTH, "Idempotency-Key": "retry-1"}
    status, _, first = request(server.port, "POST", "/enroll", body, keyed)
    assert status == 200 and first["added"] == 2 and len(first["sample_ids"]) in (0, 2)
    status, _, again = request(server.port, "POST", "/enroll", body, keyed)
    assert status == 200 and again["job"] == first["job"] and again["added"] == 2
    status, _, other = request(server.port, "POST", "/enroll", enroll_body("mug2", images), keyed)
    assert status == 422 and "Idempotency-Key" in other["error"]
    status, _, plain = request(server.port, "POST", "/enroll", body, AUTH)  # no key: by content
    assert status == 200 and plain["added"] == 0 and plain["duplicates"] == 2
    counts = {c.label: c.samples for c in service.gallery.classes()}
    assert counts["mug"] == 2


def test_bad_images_are_reported_and_requests_are_bounded(kiosk, sample_files):
    server, _, _ = kiosk(max_images=3)
    good = jpeg_b64(sample_files["watch"][0], 160)
    status, _, doc = request(server.port, "POST", "/enroll",
                             enroll_body("band", [good, base64.b64encode(b"no image").decode()]),
                             AUTH)
    assert status == 200 and doc["added"] == 1 and doc["classes"] == 3
    assert doc["failed"][0]["image"] == "images[1]" and "images[1]" in doc["failed"][0]["error"]
    status, _, doc = request(server.port, "POST", "/enroll", enroll_body("band", [good] * 4), AUTH)
    assert status == 413 and "limit is 3" in doc["error"]
    status, _, doc = request(server.port, "POST", "/enroll", enroll_body("band", [good]),
                             {**AUTH, "Content-Type": "text/plain"})
    assert status == 415
    status, _, doc = request(server.port, "POST", "/enroll",
                             enroll_body("band", [base64.b64encode(b"x").decode()]), AUTH)
    assert status == 422 and "none of the 1 images" in doc["error"]
    assert request(server.port, "GET", "/enroll/0123abcd", headers=AUTH)[0] == 404


def test_a_full_enrollment_queue_answers_429(kiosk, sample_files):
    server, _, _ = kiosk(enroll_queue=1, max_images=300, request_timeout=0.0)
    files = [f for paths in sample_files.values() for f in paths]
    slow = enroll_body("slow", [jpeg_b64(files[i % len(files)], 480 + i) for i in range(200)])
    statuses = [request(server.port, "POST", "/enroll", slow, AUTH)[0]]  # runs
    statuses += [request(server.port, "POST", "/enroll", enroll_body("a"), AUTH)[0]]  # waits
    status, headers, body = request(server.port, "POST", "/enroll", enroll_body("b"), AUTH)
    assert statuses == [202, 202] and status == 429 and headers["retry-after"]
    assert "already waiting" in body["error"]


# -- property: any JSON body gets a JSON answer ---------------------------------------------
_ODD = st.sampled_from(["\ud800", "\udfff", "\u202e", "\u200b", "\u2028", "\x00", "\u0301"])
_TEXT = st.text(st.one_of(st.characters(), _ODD), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT
    | st.just([]) | st.just({}),
    lambda inner: st.lists(inner, min_size=1, max_size=4)
    | st.dictionaries(_TEXT, inner, min_size=1, max_size=4),
    max_leaves=12)
_BODIES = st.one_of(
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"label": _TEXT}, optional={"images": st.lists(
        _TEXT | _JSON, max_size=3)}).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 120_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 6000).map(lambda n: b'{"label": ' + b"7" * n + b"}"),
    st.binary(max_size=40))


def test_any_json_body_gets_a_json_status(kiosk):
    server, _, _ = kiosk()

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(body=_BODIES, with_token=st.booleans(), json_type=st.booleans())
    def post(body: bytes, with_token: bool, json_type: bool) -> None:
        headers = {"Content-Type": "application/json" if json_type else "text/plain"}
        if with_token:
            headers["Authorization"] = f"Bearer {TOKEN}"
        status, _, answer = request(server.port, "POST", "/enroll", body, headers)
        assert status in ENROLL_STATUSES and isinstance(answer, dict), (status, answer)
        assert status < 300 or isinstance(answer["error"], str)

    post()
    assert request(server.port, "GET", "/health")[0] == 200
