"""``tledge gui --hub DSN``: the app as one device of a fleet.

Once a model and gallery are open, a ``SyncAgent`` (``tledge.fleet.sync``) keeps the gallery
in sync with the hub on its own thread; this widget shows its state in the status bar
("hub: connected, lag 0, 0 to send"), refreshes the class list when changes arrive, and
reopens the gallery with the new model after a fleet rollout. The UI never waits on the hub.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QLabel

POLL_MS = 1000


class FleetLink(QObject):
    def __init__(self, window, dsn: str, device_name: str | None = None) -> None:
        super().__init__(window)
        self.window, self.dsn, self.device_name = window, dsn, device_name
        self.agent = None
        self._key: tuple | None = None
        self._applied = None
        self.label = QLabel("hub: waiting for a model")
        window.statusBar().addPermanentWidget(self.label)
        window.model_ready.connect(self._follow)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._poll)
        self.timer.start(POLL_MS)
        window.destroyed.connect(self.stop)

    def _follow(self) -> None:
        """(Re)start the agent for the window's current gallery and model."""
        from tledge.errors import TledgeError
        from tledge.fleet.sync import SyncAgent

        embedder, gallery = self.window.embedder, self.window.gallery
        key = (str(gallery.path), embedder.fingerprint)
        if key == self._key:
            return
        self.stop()
        try:
            self.agent = SyncAgent(gallery.path, self.dsn, embedder,
                                   device_name=self.device_name).start()
            self._key = key
        except TledgeError as exc:
            self.label.setText(f"hub: {exc}")

    def _poll(self) -> None:
        if self.agent is None:
            return
        s = self.agent.status()
        lag = "?" if s["lag"] is None else s["lag"]
        self.label.setText(f"hub: {s['state']}, lag {lag}, {s['pending']} to send")
        self.label.setToolTip(s.get("last_error") or s.get("hub") or "")
        if s["applied_seq"] != self._applied and self.window.gallery is not None:
            self._applied = s["applied_seq"]
            self.window.gallery_model.refresh(self.window.gallery)
        if s.get("model_changed") and s.get("model_path") and \
                s["fingerprint"] != self._key[1]:
            self.window.open_model(s["model_path"], str(self.window.gallery.path))

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
            self._key = None
