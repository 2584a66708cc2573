"""The real app, offscreen, on real image and video sources (pytest-qt)."""

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from PySide6.QtCore import QSettings  # noqa: E402
from tledge_gui.main_window import MainWindow  # noqa: E402


@pytest.fixture()
def window(qtbot, tmp_path, tiny_model, video):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(str(video), str(tiny_model), str(tmp_path / "gallery"), settings=settings)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.view.image is not None, timeout=10_000)
    yield w
    w.close()
    assert not w.thread.isRunning()  # no worker outlives the window


def enroll(qtbot, w, name, shots=3):
    w.name_edit.setText(name)
    for _ in range(shots):
        w.capture_shot()
    assert w.thumbs.count() == shots
    w.save_enrollment()
    qtbot.waitUntil(lambda: any(r[0] == name for r in w.gallery_model.rows), timeout=10_000)


def test_enroll_through_the_ui_then_recognise(qtbot, window):
    window.threshold_slider.setValue(50)
    enroll(qtbot, window, "cup")
    assert window.gallery_model.rows[0][:2] == ("cup", 3) and window.thumbs.count() == 0
    qtbot.waitUntil(lambda: window.view.text in ("cup", "unknown"), timeout=10_000)
    qtbot.waitUntil(lambda: window.view.text == "cup", timeout=10_000)
    assert "score" in window.view.detail


def test_rename_delete_and_threshold(qtbot, window):
    enroll(qtbot, window, "cup")
    window.rename_class("cup", "mug ☕")
    qtbot.waitUntil(lambda: [r[0] for r in window.gallery_model.rows] == ["mug ☕"], timeout=5000)
    window.threshold_slider.setValue(100)
    assert window.worker.recognizer.threshold == 1.0
    qtbot.waitUntil(lambda: window.view.text == "unknown", timeout=10_000)
    window.delete_class("mug ☕")
    qtbot.waitUntil(lambda: window.gallery_model.rows == [], timeout=5000)


def test_gallery_of_another_model_is_explained_not_crashed(qtbot, window, tmp_path, other_model):
    enroll(qtbot, window, "cup")
    assert not window.open_model(str(other_model), str(tmp_path / "gallery"))
    assert window.error_label.isVisible() and "another model" in window.error_label.text()
    assert window.worker.recognizer is None
    qtbot.waitUntil(lambda: window.view.text == "no gallery", timeout=5000)


def test_lost_source_is_reported_and_recovered(qtbot, window, video, tmp_path):
    window.set_source(str(tmp_path / "unplugged.mp4"))
    qtbot.waitUntil(lambda: "retrying" in window.error_label.text(), timeout=10_000)
    window.set_source(str(video))
    seen = window.view.image
    qtbot.waitUntil(lambda: window.view.image is not seen, timeout=10_000)


def test_unreadable_model_is_shown_in_the_window(qtbot, window, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    assert not window.open_model(str(bad))
    assert "cannot open the model" in window.error_label.text()


def test_kiosk_is_locked_until_the_pin(qtbot, tmp_path, tiny_model, video):
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    w = MainWindow(str(video), str(tiny_model), str(tmp_path / "g"), kiosk=True, pin="1234",
                   settings=settings)
    qtbot.addWidget(w)
    w.showFullScreen()
    assert not w.panel.isVisible() and w.view.big_text
    w._ask_pin()
    w.unlock_edit.setText("0000")
    w._try_unlock()
    assert not w.panel.isVisible()
    w._ask_pin()
    w.unlock_edit.setText("1234")
    w._try_unlock()
    assert w.panel.isVisible()
    w.close()
    assert not w.thread.isRunning()


def test_app_entry_point_takes_a_screenshot(tmp_path, tiny_model, video):
    import subprocess
    import sys

    shot = tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "tledge_gui.app", "--model", str(tiny_model),
                          "--gallery", str(tmp_path / "g"), "--source", str(video),
                          "--screenshot", str(shot), "--exit-after", "4"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_tledge_gui_passes_its_arguments_to_the_app(capsys):
    from tledge.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gui", "--help"])
    assert exc.value.code == 0 and "--kiosk" in capsys.readouterr().out
