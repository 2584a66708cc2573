"""The main window: live view, enrollment, gallery panel, threshold, status. No ML here:
everything goes through ``tledge.runtime`` objects; inference runs in the worker, and models
and galleries are opened by the loader, so the UI thread never waits on either."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QThread, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from tledge.runtime import Embedder, Gallery, Recognizer
from tledge_gui.loader import ModelLoader
from tledge_gui.pin import PinLock
from tledge_gui.signals import emit
from tledge_gui.widgets import GalleryModel, VideoView, to_qimage
from tledge_gui.worker import RecognitionWorker


class MainWindow(QMainWindow):
    """``model_ready`` / ``model_failed(message)`` answer each ``open_model``/``open_gallery``.

    ``pin`` unlocks enrollment in kiosk mode; ``clock`` (monotonic seconds) times its lockout.
    """

    model_ready = Signal()
    model_failed = Signal(str)

    def __init__(self, source: str, model: str | None, gallery: str | None, kiosk: bool = False,
                 pin: str | None = None, settings: QSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.setWindowTitle("tledge — recognise objects")
        self.settings = settings or QSettings("tledge", "tledge-gui")
        self.kiosk = kiosk
        self.pin_lock = PinLock(pin, clock) if pin else None
        self.loading = False
        self._request = 0  # the newest load request; older answers are dropped
        self.embedder: Embedder | None = None
        self.gallery: Gallery | None = None
        self.shots: list = []
        self.first_result_callbacks: list = []
        self.view = VideoView(big_text=kiosk)
        self.gallery_model = GalleryModel()
        self._build_panel()
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.panel)
        self.setCentralWidget(central)
        self.status_label = QLabel("starting")
        self.statusBar().addPermanentWidget(self.status_label)
        self._start_worker(source)
        self._start_loader()
        if model:
            self.open_model(model, gallery)
        if kiosk:
            self._enter_kiosk()

    # -- layout --------------------------------------------------------------------------------
    def _build_panel(self) -> None:
        self.panel = QWidget()
        self.panel.setFixedWidth(330)
        col = QVBoxLayout(self.panel)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("background:#7a1f1f;color:white;padding:6px;")
        self.error_label.hide()
        col.addWidget(self.error_label)

        box = QGroupBox("Model and gallery")
        v = QVBoxLayout(box)
        self.model_label = QLabel("no model loaded")
        self.model_label.setWordWrap(True)
        v.addWidget(self.model_label)
        v.addLayout(_buttons(("Model…", self._pick_model), ("Gallery…", self._pick_gallery),
                             ("Source…", self._pick_source)))
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, 100)
        self.threshold_label = QLabel("threshold –")
        self.threshold_slider.valueChanged.connect(self._threshold_moved)
        self.threshold_slider.sliderReleased.connect(self._threshold_saved)
        v.addWidget(self.threshold_label)
        v.addWidget(self.threshold_slider)
        col.addWidget(box)

        self.enroll_box = QGroupBox("Enroll an object")
        v = QVBoxLayout(self.enroll_box)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("name of the object")
        v.addWidget(self.name_edit)
        row = QHBoxLayout()
        self.shots_spin = QSpinBox()
        self.shots_spin.setRange(1, 20)
        self.shots_spin.setValue(3)
        self.shots_spin.setPrefix("shots: ")
        self.capture_button = QPushButton("Capture (Space)")
        self.capture_button.clicked.connect(self.capture_shot)
        self.countdown_button = QPushButton("Countdown")
        self.countdown_button.clicked.connect(self._start_countdown)
        for w in (self.shots_spin, self.capture_button, self.countdown_button):
            row.addWidget(w)
        v.addLayout(row)
        self.thumbs = QListWidget()
        self.thumbs.setViewMode(QListWidget.ViewMode.IconMode)
        self.thumbs.setFixedHeight(74)
        v.addWidget(self.thumbs)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(self.save_enrollment)
        retake = QPushButton("Retake")
        retake.clicked.connect(self.clear_shots)
        row.addWidget(self.save_button)
        row.addWidget(retake)
        v.addLayout(row)
        col.addWidget(self.enroll_box)

        self.gallery_box = QGroupBox("Gallery")
        v = QVBoxLayout(self.gallery_box)
        self.class_list = QListView()
        self.class_list.setModel(self.gallery_model)
        v.addWidget(self.class_list)
        v.addLayout(_buttons(("Add shots", self._add_shots), ("Rename", self._rename),
                             ("Delete", self._delete)))
        col.addWidget(self.gallery_box, 1)
        QShortcut(QKeySequence(Qt.Key.Key_Space), self, self.capture_shot)

    # -- worker ----------------------------------------------------------------------------------
    def _start_worker(self, source: str) -> None:
        self.source = source
        self.thread = QThread(self)
        self.worker = RecognitionWorker(source)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.finished.connect(self.thread.quit)
        self.worker.frame.connect(self._on_frame)
        self.worker.status.connect(self._on_status)
        self.worker.error.connect(self.show_error)
        self.worker.job_done.connect(self._on_job_done)
        self.view.roi_changed.connect(self.set_roi)
        self.thread.start()

    def _start_loader(self) -> None:
        self.loader_thread = QThread(self)
        self.loader = ModelLoader()
        self.loader.moveToThread(self.loader_thread)
        self.loader.ready.connect(self._on_loaded)
        self.loader.failed.connect(self._on_load_failed)
        self.loader_thread.start()

    def stop_worker(self) -> None:
        self.worker.stop()
        self.thread.quit()
        self.thread.wait(10_000)
        self._request += 1  # an answer still in flight is dropped (and its gallery closed)
        self.loader_thread.quit()
        self.loader_thread.wait(30_000)

    def _on_frame(self, rgb, result, fps: float) -> None:
        if result is None:
            text, known, detail = ("no gallery" if self.gallery is None else "…"), False, ""
        elif result.label is None:
            text, known = "unknown", False
            detail = f"closest: {result.candidate} ({result.score:.2f})" if result.candidate else ""
        else:
            text, known, detail = result.label, True, f"score {result.score:.2f}"
        self.view.show_frame(rgb, text, known, detail)
        latency = f"{result.latency_ms:.1f} ms" if result else "–"
        provider = self.embedder.provider if self.embedder else "no model"
        self.status_label.setText(f"{fps:.1f} FPS | {latency} | {provider} | {self.source}")
        if result is not None and self.first_result_callbacks:
            callbacks, self.first_result_callbacks = self.first_result_callbacks, []
            for callback in callbacks:
                callback()

    def _on_status(self, text: str) -> None:
        self.statusBar().showMessage(text, 5000)
        if "retrying" in text:
            self.show_error(text)
        else:
            self.error_label.hide()

    def show_error(self, text: str) -> None:
        self.error_label.setText(text)
        self.error_label.show()

    def _on_job_done(self, tag, result) -> None:
        if isinstance(result, Exception):
            self.show_error(str(result))
            return
        if isinstance(tag, tuple) and tag[0] == "enroll":
            self.clear_shots()
            self.name_edit.clear()
            skipped = getattr(result, "duplicates", 0)  # shots identical to stored ones
            self.statusBar().showMessage(
                f"enrolled {tag[1]!r} ({result.added} shots"
                + (f", {skipped} identical skipped)" if skipped else ")"), 5000)
        self.worker.reset_smoothing()
        self.gallery_model.refresh(self.gallery)

    # -- model and gallery -----------------------------------------------------------------------
    def open_model(self, model: str, gallery: str | None = None) -> None:
        """Open ``model`` and ``gallery`` (default: next to the model) in the loader thread;
        ``model_ready`` or ``model_failed`` tells when it is done. The current model and
        gallery keep working until then."""
        gallery = gallery or str(Path(model).with_suffix("")) + "-gallery"
        self._request_load(model, None, gallery, f"loading model {Path(model).name}…")

    def open_gallery(self, path: str) -> None:
        """Open or create the gallery at ``path`` for the current model (in the loader)."""
        if self.embedder is None:
            self.show_error("open a model first")
            emit(self.model_failed, "open a model first")
            return
        self._request_load(None, self.embedder, path, f"opening gallery {Path(path).name}…")

    def _request_load(self, model: str | None, embedder: Embedder | None, gallery: str,
                      text: str) -> None:
        self._request += 1
        self.loading = True
        self.statusBar().showMessage(text)
        if model is not None:
            self.model_label.setText(text)
        emit(self.loader.requested, self._request, model, embedder, gallery)

    def _on_loaded(self, request: int, recognizer: Recognizer) -> None:
        gallery = recognizer.gallery
        if request != self._request:  # superseded, or the window is closing
            gallery.close()
            return
        self.loading = False
        self._show_model(recognizer.embedder)
        self._swap_gallery(gallery)
        self.settings.setValue("gallery", str(gallery.path))
        self.threshold_slider.setValue(round(recognizer.threshold * 100))
        self.worker.recognizer = recognizer
        self.gallery_model.refresh(gallery)
        self.error_label.hide()
        self.statusBar().showMessage(f"ready: {gallery.path.name}", 5000)
        emit(self.model_ready)

    def _on_load_failed(self, request: int, message: str, embedder: Embedder | None) -> None:
        if request != self._request:
            return
        self.loading = False
        if embedder is not None:  # the model opened but its gallery did not: no recognition
            self._show_model(embedder)
            self.worker.recognizer = None
            self._swap_gallery(None)
            self.gallery_model.refresh(None)
        elif self.embedder is not None:
            self._show_model(self.embedder)  # the previous model is still the one in use
        else:
            self.model_label.setText("no model loaded")
        self.show_error(message)
        emit(self.model_failed, message)

    def _show_model(self, embedder: Embedder) -> None:
        self.embedder = embedder
        info = embedder.info
        self.model_label.setText(f"<b>{embedder.path.name}</b><br>{info.backbone}, "
                                 f"{info.precision}, {info.embedding_dim}-d, "
                                 f"{info.preprocess.crop_size}px<br>provider: {embedder.provider}")
        self.settings.setValue("model", str(embedder.path))

    def _swap_gallery(self, gallery: Gallery | None) -> None:
        """Make ``gallery`` current; the old one is closed in the worker, after the frame and
        the jobs that may still use it."""
        old, self.gallery = self.gallery, gallery
        if old is not None and old is not gallery:
            self.worker.recognizer = None
            self.worker.submit(("close", str(old.path)), old.close)

    def recognizer_ready(self) -> bool:
        return self.worker.recognizer is not None

    def _threshold_moved(self, value: int) -> None:
        self.threshold_label.setText(f"threshold {value / 100:.2f}")
        recognizer = self.worker.recognizer  # one read: the worker may swap it meanwhile
        if recognizer is not None:
            recognizer.threshold = value / 100  # takes effect on the next frame

    def _threshold_saved(self) -> None:
        if self.gallery is not None:
            gallery, value = self.gallery, self.threshold_slider.value() / 100
            self.worker.submit("threshold", lambda: setattr(gallery, "threshold", value))

    # -- enrollment --------------------------------------------------------------------------------
    def capture_shot(self) -> None:
        frame = self.worker.last_frame()
        if frame is None:
            self.show_error("no frame to capture yet")
            return
        if self.worker.roi is not None:
            from tledge.runtime.recognizer import crop_roi

            frame = crop_roi(frame, self.worker.roi)
        self.shots.append(frame)
        item = QListWidgetItem(f"{len(self.shots)}")
        from PySide6.QtGui import QIcon, QPixmap

        item.setIcon(QIcon(QPixmap.fromImage(to_qimage(frame)).scaledToHeight(48)))
        self.thumbs.addItem(item)

    def _start_countdown(self, seconds: int = 3) -> None:
        self.countdown_button.setEnabled(False)
        for i in range(seconds):
            label = f"{seconds - i}…"
            QTimer.singleShot(1000 * i, lambda text=label: self.countdown_button.setText(text))
        for k in range(self.shots_spin.value()):
            QTimer.singleShot(1000 * seconds + 300 * k, self.capture_shot)
        QTimer.singleShot(1000 * seconds + 300 * self.shots_spin.value(), self._countdown_done)

    def _countdown_done(self) -> None:
        self.countdown_button.setText("Countdown")
        self.countdown_button.setEnabled(True)

    def clear_shots(self) -> None:
        self.shots = []
        self.thumbs.clear()

    def save_enrollment(self, label: str | None = None) -> None:
        label = (label or self.name_edit.text()).strip()
        if not label:
            self.show_error("type a name for the object first")
            return
        if not self.shots or self.gallery is None:
            self.show_error("capture at least one shot, with a model and gallery open")
            return
        gallery, shots = self.gallery, list(self.shots)
        self.worker.submit(("enroll", label), lambda: gallery.enroll(label, shots))

    def selected_label(self) -> str | None:
        index = self.class_list.currentIndex()
        return index.data(Qt.ItemDataRole.UserRole) if index.isValid() else None

    def _add_shots(self) -> None:
        if self.selected_label():
            self.save_enrollment(self.selected_label())

    def _rename(self) -> None:
        old = self.selected_label()
        if old is None or self.gallery is None:
            return
        new, ok = QInputDialog.getText(self, "Rename", f"New name for {old!r}:", text=old)
        if ok and new.strip() and new.strip() != old:
            self.rename_class(old, new.strip())

    def rename_class(self, old: str, new: str) -> None:
        gallery = self.gallery
        self.worker.submit(("rename", old), lambda: gallery.rename(old, new))

    def _delete(self) -> None:
        if self.selected_label() is not None:
            self.delete_class(self.selected_label())

    def delete_class(self, label: str) -> None:
        gallery = self.gallery
        self.worker.submit(("remove", label), lambda: gallery.remove(label))

    # -- pickers, kiosk, shutdown ------------------------------------------------------------------
    def _pick_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open model", "", "ONNX models (*.onnx)")
        if path:
            self.open_model(path)

    def _pick_gallery(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open or create a gallery folder")
        if path:
            self.open_gallery(path)

    def _pick_source(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a video or image", "",
                                              "Media (*.mp4 *.avi *.mov *.mkv *.jpg *.png)")
        if path:
            self.set_source(path)

    def set_roi(self, roi: tuple[int, int, int, int] | None) -> None:
        """Recognise (and capture) only this part of the frame; None for the whole frame."""
        self.view.roi = roi
        self.worker.roi = roi
        self.worker.reset_smoothing()
        self.view.update()

    def set_source(self, source: str) -> None:
        self.source = source
        self.settings.setValue("source", source)
        self.worker.set_source(source)

    def _enter_kiosk(self) -> None:
        self.panel.setVisible(False)
        self.unlock_edit = QLineEdit(self)
        self.unlock_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.unlock_edit.setPlaceholderText("PIN")
        self.unlock_edit.hide()
        self.unlock_edit.returnPressed.connect(self._try_unlock)
        self.lock_label = QLabel()
        self.lock_label.hide()
        self.lock_timer = QTimer(self)  # counts the lockout down for the user
        self.lock_timer.setInterval(1000)
        self.lock_timer.timeout.connect(self._show_lock)
        self.statusBar().addWidget(self.unlock_edit)
        self.statusBar().addWidget(self.lock_label)
        QShortcut(QKeySequence("Ctrl+E"), self, self._ask_pin)

    def _ask_pin(self) -> None:
        if self.pin_lock is None:  # no PIN configured: enrollment stays locked in kiosk mode
            return
        if self._show_lock():
            return
        self.unlock_edit.show()
        self.unlock_edit.setFocus()

    def _try_unlock(self) -> None:
        text = self.unlock_edit.text()
        self.unlock_edit.clear()
        self.unlock_edit.hide()
        ok = self.pin_lock is not None and self.pin_lock.try_pin(text)
        self.panel.setVisible(ok)
        if ok:
            self.lock_label.hide()
        elif not self._show_lock():
            left = self.pin_lock.free_tries - self.pin_lock.failures if self.pin_lock else 0
            self.lock_label.setText(f"wrong PIN ({max(0, left)} tries before a lockout)")
            self.lock_label.show()

    def _show_lock(self) -> bool:
        """Show how long the PIN stays locked; True while it is."""
        wait = self.pin_lock.locked_for() if self.pin_lock else 0.0
        if wait <= 0:
            self.lock_timer.stop()
            self.lock_label.hide()
            return False
        self.unlock_edit.hide()
        self.lock_label.setText(f"too many wrong PINs: locked, try again in {wait:.0f} s")
        self.lock_label.show()
        self.lock_timer.start()
        return True

    def closeEvent(self, event) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("source", self.source)
        self.stop_worker()
        if self.gallery is not None:
            self.gallery.close()
        super().closeEvent(event)


def _buttons(*pairs) -> QHBoxLayout:
    """A row of push buttons from (text, slot) pairs."""
    row = QHBoxLayout()
    for text, slot in pairs:
        button = QPushButton(text)
        button.clicked.connect(slot)
        row.addWidget(button)
    return row
