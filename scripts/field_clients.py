"""The field test's moving parts: the kiosk process (restarted like systemd would) and the
clients that use and abuse it. Every loop is bounded by the run's deadline."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import field_attacks as attacks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FieldRun:
    """Prepares a model, a gallery and a video, then runs the kiosk under attack."""

    def __init__(self, workdir: Path, model: Path | None, backbone: str, video: Path | None,
                 seed: int) -> None:
        self.workdir, self.model, self.backbone = workdir, model, backbone
        self.video, self.seed = video, seed
        self.gallery = workdir / "gallery"
        self.token = secrets.token_hex(24)
        self.port = free_port()
        self.frames: list[dict] = []          # every "frame" event the kiosk printed
        self.events = Counter()
        self.stats = Counter()
        self.statuses: Counter = Counter()    # "client kind HTTP status" -> count
        self.lock = threading.Lock()
        self.peak_rss_kb = 0
        self.proc: subprocess.Popen | None = None
        self.restarts_requested = 0
        self.restarting = False   # from a SIGTERM until /health answers 200 again

    # -- set-up ---------------------------------------------------------------------------
    def prepare(self) -> None:
        from tledge.runtime import Embedder, Gallery
        from tledge.runtime.batch import enroll_folder
        from tledge.samples import enroll_dir, query_dir

        if self.model is None:
            from tledge.train.export import ExportOptions, export_model

            self.model = self.workdir / f"{self.backbone}.onnx"
            if not self.model.exists():
                print(f"exporting {self.backbone} to {self.model} ...", flush=True)
                export_model(self.model, ExportOptions(backbone=self.backbone, parity_limit=8))
        if self.video is None:
            self.video = self._make_clip(query_dir())
        with Gallery.open_or_create(self.gallery, Embedder(self.model, providers="cpu")) as g:
            enroll_folder(g, enroll_dir())
        (self.workdir / "token").write_text(self.token)
        self.images = sorted(query_dir().rglob("*.jpg")) + sorted(enroll_dir().rglob("*.jpg"))

    def _make_clip(self, folder: Path) -> Path:
        import cv2

        from tledge.runtime.images import load_image

        path = self.workdir / "clip.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
        for image in sorted(folder.rglob("*.jpg")):
            frame = cv2.resize(load_image(image)[:, :, ::-1], (320, 240))
            for _ in range(8):
                writer.write(frame)
        writer.release()
        return path

    # -- the kiosk, restarted on a crash ----------------------------------------------------
    def _start_kiosk(self, seconds: float) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "tledge.cli", "kiosk", "--model", str(self.model),
               "--gallery", str(self.gallery), "--source", str(self.video), "--loop",
               "--every-frame", "--port", str(self.port), "--allow-enroll",
               "--token-file", str(self.workdir / "token"), "--threads", "1",
               "--exit-after", f"{max(seconds, 1.0):.1f}"]
        log = open(self.workdir / "kiosk.log", "a")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read_events, args=(proc,), daemon=True).start()
        return proc

    def _read_events(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.stats["unparseable stdout lines"] += 1
                continue
            with self.lock:
                self.events[event.get("event", "?")] += 1
                if event.get("event") == "frame":
                    self.frames.append(event)

    def _watch_memory(self, proc: subprocess.Popen) -> None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
        except OSError:
            pass

    def run(self, seconds: float) -> dict:
        """Run the kiosk for ``seconds`` with every client; returns the raw counters."""
        deadline = time.monotonic() + seconds
        self.proc = self._start_kiosk(seconds)
        self.base = f"127.0.0.1:{self.port}"
        if not attacks.wait_ready(self.base, deadline):
            raise SystemExit(f"the kiosk did not start; see {self.workdir / 'kiosk.log'}")
        threads = [threading.Thread(target=self._client, args=(fn, deadline, i), daemon=True)
                   for i, fn in enumerate(attacks.CLIENTS)]
        for t in threads:
            t.start()
        while time.monotonic() < deadline + 30:
            self._watch_memory(self.proc)
            code = self.proc.poll()
            if code is not None:
                with self.lock:
                    asked = self.restarts_requested > 0
                    self.restarts_requested -= asked
                if code != 0 or (not asked and time.monotonic() < deadline - 2):
                    self.stats["crashes"] += 1
                    print(f"kiosk exited with {code}; restarting", flush=True)
                if time.monotonic() < deadline - 5:
                    self.proc = self._start_kiosk(deadline - time.monotonic())
                    continue
                break
            time.sleep(0.5)
        else:
            self.proc.kill()
            self.stats["kiosk did not stop at --exit-after"] += 1
        for t in threads:
            t.join(timeout=15)
        return self.summary()

    def _client(self, fn, deadline: float, seed: int) -> None:
        """Run one client; a bug in the test's own client is counted, not hidden."""
        try:
            fn(self, deadline, seed)
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            self.stats[f"field-test client {fn.__name__} failed: {exc!r}"] += 1

    def restart_requested(self) -> None:
        """SIGTERM the kiosk (like `systemctl restart`); the watcher starts it again."""
        with self.lock:
            self.restarts_requested += 1
            self.restarting = True
            proc = self.proc
        proc.terminate()
        self.stats["restarts (SIGTERM)"] += 1

    def count(self, kind: str, status: int | str) -> None:
        """Count one answer; answers while the kiosk restarts are counted apart."""
        with self.lock:
            if kind == "GET /health" and status == 200:
                self.restarting = False
            where = " (while restarting)" if self.restarting else ""
            self.statuses[f"{kind}{where} {status}"] += 1

    def summary(self) -> dict:
        answered = sum(n for k, n in self.statuses.items() if k.split()[-1].isdigit())
        running = {k: n for k, n in self.statuses.items() if "restarting" not in k}
        return {"requests": sum(self.statuses.values()), "answered": answered,
                "running_requests": sum(running.values()),
                "running_answered": sum(n for k, n in running.items()
                                        if k.split()[-1].isdigit()),
                "statuses": dict(sorted(self.statuses.items())), "events": dict(self.events),
                "crashes": self.stats["crashes"], "peak_rss_mb": self.peak_rss_kb / 1024,
                "other": {k: v for k, v in self.stats.items() if k != "crashes"},
                "frames": len(self.frames)}
