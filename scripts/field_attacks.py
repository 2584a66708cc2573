"""The field test's clients: each runs until the deadline, records every answer's status in
``run.count(kind, status)`` ("no answer"/"refused" when there was none)."""

from __future__ import annotations

import base64
import http.client
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path


def request(base: str, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, timeout: float = 30.0) -> tuple[int | str, bytes]:
    host, port = base.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except ConnectionRefusedError:
        return "refused", b""
    except (OSError, http.client.HTTPException) as exc:
        return f"no-answer:{type(exc).__name__}", b""
    finally:
        conn.close()


def wait_ready(base: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        status, _ = request(base, "GET", "/health", timeout=2)
        if status == 200:
            return True
        time.sleep(0.3)
    return False


def _alive(run, deadline: float) -> bool:
    return time.monotonic() < deadline - 1


def health_poller(run, deadline: float, seed: int) -> None:
    """/health, /status and /last twice a second; a non-200 health while running counts."""
    while _alive(run, deadline):
        for path in ("/health", "/status", "/last"):
            status, _ = request(run.base, "GET", path, timeout=5)
            run.count(f"GET {path}", status)
        time.sleep(0.5)


def enroller(run, deadline: float, seed: int) -> None:
    """Enroll shipped images under a few labels; a third are exact retries."""
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {run.token}", "Content-Type": "application/json"}
    previous = None
    while _alive(run, deadline):
        if previous is not None and rng.random() < 0.33:
            body, headers = previous                          # a retry of the last request
        else:
            files = rng.sample(run.images, rng.randint(1, 4))
            label = rng.choice(["cup", "watch", "field mug", "field bottle", "bottle"])
            payload = {"label": label,
                       "images": [base64.b64encode(Path(f).read_bytes()).decode() for f in files]}
            if rng.random() < 0.15:
                payload = {"label": "live frame"}             # the current camera frame
            headers = dict(auth)
            if rng.random() < 0.5:
                headers["Idempotency-Key"] = f"field-{seed}-{rng.getrandbits(48):x}"
            body = json.dumps(payload).encode()
        status, _ = request(run.base, "POST", "/enroll", body, headers, timeout=60)
        run.count("POST /enroll", status)
        previous = (body, headers)
        time.sleep(rng.uniform(1.0, 4.0))


def event_reader(run, deadline: float, seed: int) -> None:
    """Subscribe to /events, read for a while (or not at all), hang up, repeat."""
    rng = random.Random(seed)
    while _alive(run, deadline):
        host, port = run.base.split(":")
        try:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                head = s.recv(65536)
                run.count("GET /events", head.split(b" ", 2)[1].decode() if head else "closed")
                end = time.monotonic() + rng.uniform(1, 8)
                reads = rng.random() < 0.7                    # else a subscriber that never reads
                while reads and time.monotonic() < min(end, deadline - 1):
                    if not s.recv(65536):
                        break
                if not reads:
                    time.sleep(max(0.0, min(end, deadline - 1) - time.monotonic()))
        except OSError as exc:
            run.count("GET /events", f"no-answer:{type(exc).__name__}")
        time.sleep(rng.uniform(0.2, 2.0))


def stallers(run, deadline: float, seed: int) -> None:
    """Hold 60 connections: silent ones and ones trickling a request a byte at a time."""
    rng = random.Random(seed)
    host, port = run.base.split(":")
    socks = []
    for i in range(60):
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            socks.append((s, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" if i % 2 else b""))
        except OSError:
            run.stats["staller connects refused"] += 1
    run.stats["staller connections opened"] += len(socks)
    position = [0] * len(socks)
    while _alive(run, deadline) and socks:
        for k, (s, trickle) in enumerate(socks):
            if s is None or position[k] >= len(trickle):
                continue
            try:
                s.sendall(trickle[position[k]:position[k] + 1])
                position[k] += 1
            except OSError:
                run.stats["stalled connections closed by the kiosk"] += 1
                socks[k] = (None, b"")
        time.sleep(rng.uniform(1.0, 3.0))
    for s, _ in socks:
        if s is not None:
            s.close()


GARBAGE = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(40)) + b"\r\n\r\n",
    b"GARBAGE / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: attacker.example\r\n\r\n",
    b"GET /last HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://attacker.example\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\n{\"la",
    b"POST /enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer nope\r\n"
    b"Content-Length: 39\r\n\r\nGET /evil HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
]


def garbage(run, deadline: float, seed: int) -> None:
    """Malformed, hostile and oversized requests; bad JSON with the right token."""
    rng = random.Random(seed)
    host, port = run.base.split(":")
    auth = {"Authorization": f"Bearer {run.token}", "Content-Type": "application/json"}
    bodies = [b"[" * 100_000 + b"]" * 100_000, b'{"label": "\\ud800"}', b"{not json",
              b'{"label": "x", "images": ["%%%"]}', b'{"label": 5}',
              json.dumps({"label": "x", "images": ["AAAA"] * 500}).encode()]
    while _alive(run, deadline):
        if rng.random() < 0.5:
            try:
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    s.sendall(rng.choice(GARBAGE))
                    head = s.recv(200)
                    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") \
                        else "closed"
            except OSError as exc:
                status = f"no-answer:{type(exc).__name__}"
            run.count("raw garbage", status)
        else:
            status, _ = request(run.base, "POST", "/enroll", rng.choice(bodies), auth)
            run.count("POST /enroll (bad body)", status)
        time.sleep(rng.uniform(0.1, 0.6))


def cache_damager(run, deadline: float, seed: int) -> None:
    """Truncate, empty, bit-flip, replace, delete or put back an older copy of the index
    cache at random moments (the kiosk reads it when it starts and when another process
    changed the gallery)."""
    rng = random.Random(seed)
    cache = run.gallery / "index.npz"
    older: bytes | None = None
    while _alive(run, deadline):
        time.sleep(rng.uniform(1.0, 4.0))
        if not cache.exists():
            if older is not None:
                cache.write_bytes(older)
                run.stats["cache damaged (older copy put back)"] += 1
            continue
        data = bytearray(cache.read_bytes())
        if older is None or rng.random() < 0.3:
            older = bytes(data)
        how = rng.choice(["truncate", "empty", "flip", "garbage", "delete", "older"])
        if how == "older":
            data = bytearray(older)
        if how == "truncate":
            data = data[:rng.randrange(max(1, len(data)))]
        elif how == "empty":
            data = bytearray()
        elif how == "flip" and data:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == "garbage" or not data:
            data = bytearray(rng.randbytes(max(len(data), 4096)))
        if how == "delete":
            cache.unlink(missing_ok=True)
        else:
            cache.write_bytes(bytes(data))
        run.stats[f"cache damaged ({how})"] += 1


def other_writer(run, deadline: float, seed: int) -> None:
    """Another process (`tledge enroll`) changes the gallery now and then, so the kiosk has
    to reload its index, from whatever cache file is on disk at that moment."""
    rng = random.Random(seed)
    while _alive(run, deadline):
        time.sleep(rng.uniform(3.0, 8.0))
        label = f"cli {rng.randrange(3)}"
        files = [str(f) for f in rng.sample(run.images, 2)]
        code = subprocess.run([sys.executable, "-m", "tledge.cli", "--quiet", "enroll",
                               "--model", str(run.model), "--gallery", str(run.gallery),
                               "--label", label, *files], capture_output=True,
                              timeout=120).returncode
        run.stats[f"other process enrolled (exit {code})"] += 1


def restarter(run, deadline: float, seed: int) -> None:
    """Stop the kiosk with SIGTERM twice during the run, as `systemctl restart` would; it
    must stop cleanly (exit 0) and start again from the files on disk."""
    start = time.monotonic()
    for share in (0.4, 0.7):
        when = start + share * (deadline - start)
        while time.monotonic() < when and _alive(run, deadline):
            time.sleep(0.5)
        if not _alive(run, deadline):
            return
        run.restart_requested()


CLIENTS = [health_poller, enroller, event_reader, event_reader, stallers, garbage,
           cache_damager, other_writer, restarter]
