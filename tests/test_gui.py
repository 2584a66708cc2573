"""The real app, offscreen, on real image and video sources (pytest-qt)."""

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from PySide6.QtCore import QSettings, QThread, QTimer  # noqa: E402
from tledge_gui.main_window import MainWindow  # noqa: E402


@pytest.fixture()
def window(qtbot, tmp_path, tiny_model, video):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(str(video), str(tiny_model), str(tmp_path / "gallery"), settings=settings)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.view.image is not None and w.recognizer_ready(), timeout=20_000)
    yield w
    w.close()
    assert not w.thread.isRunning()  # no worker outlives the window


def enroll(qtbot, w, name, shots=3):
    w.name_edit.setText(name)
    for _ in range(shots):
        w.capture_shot()
    assert w.thumbs.count() == shots
    distinct = len({shot.tobytes() for shot in w.shots})  # a held video frame repeats exactly
    w.save_enrollment()
    qtbot.waitUntil(lambda: any(r[0] == name for r in w.gallery_model.rows), timeout=10_000)
    return distinct


def test_enroll_through_the_ui_then_recognise(qtbot, window):
    window.threshold_slider.setValue(50)
    distinct = enroll(qtbot, window, "cup")
    assert window.gallery_model.rows[0][:2] == ("cup", distinct) and window.thumbs.count() == 0
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
    with qtbot.waitSignal(window.model_failed, timeout=20_000) as failed:
        window.open_model(str(other_model), str(tmp_path / "gallery"))
    assert "another model" in failed.args[0]
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
    before = window.worker.recognizer
    with qtbot.waitSignal(window.model_failed, timeout=20_000):
        window.open_model(str(bad))
    assert "cannot open the model" in window.error_label.text()
    assert window.worker.recognizer is before  # the model in use keeps working


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


def test_tledge_global_options_before_gui(capsys):
    from tledge.cli import main

    for argv in (["-q", "gui", "--help"], ["--debug", "--quiet", "gui", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0 and "--kiosk" in capsys.readouterr().out


# -- model loading off the UI thread (issue 12 item 12) ---------------------------------------

def test_model_loads_while_the_event_loop_runs(qtbot, tmp_path, tiny_model, video):
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    w = MainWindow(str(video), str(tiny_model), str(tmp_path / "g"), settings=settings)
    qtbot.addWidget(w)
    # The constructor returned before the model was loaded, and says so.
    assert w.loading and w.embedder is None and "loading model" in w.model_label.text()
    ticks_while_loading = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks_while_loading.append(1) if w.loading else None)
    timer.start(0)
    with qtbot.waitSignal(w.model_ready, timeout=20_000):
        pass
    timer.stop()
    assert ticks_while_loading  # the UI thread handled events while the model loaded
    assert not w.loading and w.embedder is not None and w.recognizer_ready()
    assert "tiny" in w.model_label.text()
    w.close()
    assert not w.thread.isRunning() and not w.loader_thread.isRunning()


def test_missing_model_is_an_error_in_the_window_not_a_crash(qtbot, tmp_path, video):
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    w = MainWindow(str(video), str(tmp_path / "missing.onnx"), None, settings=settings)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.model_failed, timeout=20_000) as failed:
        pass
    assert failed.args[0].startswith("cannot open the model")
    assert w.error_label.text().startswith("cannot open the model") and not w.loading
    qtbot.waitUntil(lambda: w.view.image is not None, timeout=10_000)  # frames still flow
    assert w.view.text == "no gallery" and w.model_label.text() == "no model loaded"
    w.close()


# -- the worker: recognizer handoff and failing frames -----------------------------------------

@pytest.fixture()
def running_worker(qtbot):
    """A RecognitionWorker on the shipped query images, as fast as it can recognise."""
    from tledge_gui.worker import RecognitionWorker

    from tledge.samples import query_dir

    worker = RecognitionWorker(str(query_dir()), folder_interval=0.0)
    thread = QThread()
    worker.moveToThread(thread)
    thread.started.connect(worker.run)
    worker.finished.connect(thread.quit)
    seen = {"frames": 0, "results": 0, "errors": []}

    def on_frame(_rgb, result, _fps):
        seen["frames"] += 1
        seen["results"] += result is not None

    worker.frame.connect(on_frame)
    worker.error.connect(seen["errors"].append)
    thread.start()

    def stop() -> None:
        worker.stop()
        thread.quit()
        assert thread.wait(10_000)

    yield worker, seen, stop
    stop()


def test_recognizer_swaps_from_the_ui_thread_never_end_the_worker(qtbot, running_worker,
                                                                 embedder, tmp_path,
                                                                 query_files):
    import sys

    from tledge.runtime import Gallery, Recognizer

    worker, seen, stop = running_worker
    with Gallery.create(tmp_path / "g", embedder) as gallery:
        gallery.enroll("cup", query_files["cup"][:1])
        recognizer = Recognizer(embedder, gallery)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible: hit the window
        try:
            start = seen["frames"]
            for i in range(200_000):
                worker.recognizer = None if i % 2 else recognizer
                if i % 2000 == 0:
                    qtbot.wait(1)  # deliver the frames signalled so far
                if seen["frames"] - start > 400:
                    break
        finally:
            sys.setswitchinterval(interval)
        worker.recognizer = recognizer
        done = seen["frames"]
        qtbot.waitUntil(lambda: seen["frames"] > done + 20, timeout=10_000)  # still running
        stop()  # before the gallery closes
        assert seen["results"] > 0 and seen["errors"] == []


def test_a_failing_frame_is_reported_and_the_worker_goes_on(qtbot, running_worker, embedder,
                                                           tmp_path, query_files):
    from tledge.runtime import Gallery, Recognizer

    worker, seen, stop = running_worker
    closed = Gallery.create(tmp_path / "closed", embedder)
    closed.enroll("cup", query_files["cup"][:1])
    closed.close()  # what a gallery swap could leave behind: not a TledgeError when used
    worker.recognizer = Recognizer(embedder, closed)
    qtbot.waitUntil(lambda: len(seen["errors"]) >= 3, timeout=10_000)
    assert "closed" in seen["errors"][0].lower()
    with Gallery.create(tmp_path / "open", embedder) as gallery:
        gallery.enroll("cup", query_files["cup"][:1])
        results = seen["results"]
        worker.recognizer = Recognizer(embedder, gallery)
        qtbot.waitUntil(lambda: seen["results"] > results + 5, timeout=10_000)
        stop()


def test_frames_do_not_wear_down_pythons_true(qtbot, running_worker):
    """PySide6 6.12 on CPython 3.11 drops a reference to True per Signal.emit: a live view
    aborted the interpreter ("bool_dealloc") after some thousands of frames."""
    import sys

    worker, seen, stop = running_worker
    qtbot.waitUntil(lambda: seen["frames"] > 0, timeout=10_000)
    before, start = sys.getrefcount(True), seen["frames"]
    qtbot.waitUntil(lambda: seen["frames"] > start + 300, timeout=30_000)
    stop()
    assert sys.getrefcount(True) - before > -100  # not one lost per frame


# -- the kiosk PIN --------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pin_lock_doubles_its_delay_and_compares_in_constant_time():
    from tledge_gui.pin import PinLock

    clock = FakeClock()
    lock = PinLock("2468", clock)
    assert [lock.try_pin(p) for p in ("1", "2", "3")] == [False] * 3
    assert lock.locked_for() == 30.0
    assert not lock.try_pin("2468")  # the right PIN while locked is refused too
    clock.now += 29.0
    assert not lock.try_pin("2468") and lock.locked_for() == 1.0
    clock.now += 1.0
    assert not lock.try_pin("0000") and lock.locked_for() == 60.0  # doubles
    clock.now += 60.0
    assert lock.try_pin("2468") and lock.failures == 0 and lock.locked_for() == 0.0
    assert not lock.try_pin("2468\u200b") and not lock.try_pin("")


def test_kiosk_pin_locks_out_after_three_wrong_tries(qtbot, tmp_path, tiny_model, video):
    clock = FakeClock()
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    w = MainWindow(str(video), str(tiny_model), str(tmp_path / "g"), kiosk=True, pin="1234",
                   settings=settings, clock=clock)
    qtbot.addWidget(w)
    w.showFullScreen()

    def attempt(pin: str) -> bool:
        w._ask_pin()
        if not w.unlock_edit.isVisible():
            return False  # locked: no field to type in
        w.unlock_edit.setText(pin)
        w._try_unlock()
        return w.panel.isVisible()

    assert [attempt(p) for p in ("0000", "1111", "2222")] == [False] * 3
    assert w.lock_label.isVisible() and "try again in 30 s" in w.lock_label.text()
    assert not attempt("1234")  # the right PIN does not help during the lockout
    w.unlock_edit.setText("1234")
    w._try_unlock()  # nor does typing it into a field left open
    assert not w.panel.isVisible()
    clock.now += 30.0
    assert attempt("1234") and not w.lock_label.isVisible()
    w.close()


def test_pin_on_the_command_line_is_refused(capsys):
    from tledge.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gui", "--kiosk", "--pin", "2468", "--exit-after", "2"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--pin-file" in err and "TLEDGE_GUI_PIN" in err


def test_pin_comes_from_a_private_file_or_the_environment(tmp_path):
    from tledge_gui.pin import read_pin

    from tledge.errors import TledgeError

    pin_file = tmp_path / "pin"
    pin_file.write_text("2468\n")
    pin_file.chmod(0o600)
    assert read_pin(pin_file, {}) == "2468"
    assert read_pin(None, {"TLEDGE_GUI_PIN": "1357"}) == "1357"
    assert read_pin(None, {}) is None
    pin_file.chmod(0o644)
    with pytest.raises(TledgeError, match="chmod 600"):
        read_pin(pin_file, {})
    with pytest.raises(TledgeError, match="cannot read"):
        read_pin(tmp_path / "none", {})
