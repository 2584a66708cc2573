"""`tledge gui --hub`: the desktop app as a fleet device (real hub, real app offscreen)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from PySide6.QtCore import QSettings  # noqa: E402
from tledge_gui.fleet import FleetLink  # noqa: E402
from tledge_gui.main_window import MainWindow  # noqa: E402

from tests import pg  # noqa: E402

pg_server, pg_db, hub_dsn = pg.pg_server, pg.pg_db, pg.hub_dsn  # fixtures


def test_a_class_enrolled_on_another_device_appears_in_the_app(qtbot, tmp_path, tiny_model,
                                                                video, hub_dsn, sample_files):
    from tledge.fleet.sync import SyncAgent
    from tledge.runtime import Embedder, Gallery

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(str(video), str(tiny_model), str(tmp_path / "app-gallery"), settings=settings)
    qtbot.addWidget(w)
    link = FleetLink(w, hub_dsn, "desk")
    w.show()
    qtbot.waitUntil(lambda: link.agent is not None, timeout=30_000)
    qtbot.waitUntil(lambda: link.label.text().startswith("hub: connected"), timeout=30_000)

    embedder = Embedder(tiny_model, providers="cpu")
    with Gallery.create(tmp_path / "kiosk-gallery", embedder) as other:
        other.enroll("watch", sample_files["watch"])
    agent = SyncAgent(tmp_path / "kiosk-gallery", hub_dsn, embedder, device_name="kiosk")
    try:
        agent.sync_once()
    finally:
        agent.stop()
    qtbot.waitUntil(lambda: [r[0] for r in w.gallery_model.rows] == ["watch"], timeout=30_000)
    assert "lag 0" in link.label.text()
    link.stop()
    w.close()
