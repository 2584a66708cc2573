"""A real device process for the fleet scenarios: a gallery, its sync agent, commands on stdin.

usage: python -m tests.fleet_device MODEL GALLERY HUB_DSN NAME
Reads one JSON command per line and answers one JSON line: enroll, rename, remove, sync,
start, stop, status, recognize, digest, labels, quit.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from tledge.fleet.sync import SyncAgent
from tledge.runtime import Embedder, Gallery


class Device:
    def __init__(self, model: str, gallery: str, dsn: str, name: str) -> None:
        self.path, self.dsn, self.name = Path(gallery), dsn, name
        self.embedder = Embedder(model, providers="cpu", threads=1)
        self.gallery = Gallery.open_or_create(self.path, self.embedder)
        self.agent = SyncAgent(self.path, dsn, self.embedder, device_name=name, poll=2.0)

    def _follow_model(self) -> None:
        """After a rollout the owner reopens the gallery with the new model."""
        status = self.agent.status()
        if status["model_changed"] and status["fingerprint"] != self.embedder.fingerprint:
            self.gallery.close()
            self.embedder = Embedder(status["model_path"], providers="cpu", threads=1)
            self.gallery = Gallery.open(self.path, self.embedder)

    def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "enroll":
            return {"added": self.gallery.enroll(cmd["label"], cmd["files"]).added}
        if op == "rename":
            self.gallery.rename(cmd["old"], cmd["new"])
        elif op == "remove":
            self.gallery.remove(cmd["label"])
        elif op == "sync":
            counts = self.agent.sync_once()
            self._follow_model()
            return counts
        elif op == "start":
            self.agent.start()
        elif op == "status":
            self._follow_model()
            return self.agent.status()
        elif op == "recognize":
            self._follow_model()
            vec = self.embedder.embed([cmd["file"]])[0]
            label, score = self.gallery.classify(vec)
            return {"label": label, "score": score}
        elif op == "digest":
            return {"digest": self.agent.replica.digest(),
                    "fingerprint": self.agent.replica.fingerprint(),
                    "pending": self.agent.replica.pending(),
                    "applied_seq": self.agent.replica.applied_seq}
        elif op == "labels":
            return {"labels": self.gallery.labels(),
                    "samples": {c.label: c.samples for c in self.gallery.classes()}}
        elif op == "quit":
            self.agent.stop()
            self.gallery.close()
        return {}


def main() -> None:
    device = Device(*sys.argv[1:5])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = {"ok": True, **device.handle(cmd)}
        except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                     "trace": traceback.format_exc(limit=3)}
        print(json.dumps(reply, default=str), flush=True)
        if cmd["op"] == "quit":
            return


if __name__ == "__main__":
    main()
