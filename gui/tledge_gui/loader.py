"""Opening a model and a gallery off the UI thread.

Creating an ONNX Runtime session, its warm-up run and opening (or checking) a gallery's
database take from a fraction of a second to many seconds; on the UI thread they would freeze
the window. ``ModelLoader`` lives in its own QThread and answers each request with ``ready`` or
``failed``, tagged with the request's number so the window can ignore answers it no longer
wants (the user picked another model meanwhile).
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal, Slot

from tledge.runtime import Embedder, Gallery, Recognizer
from tledge_gui.signals import emit
from tledge_gui.worker import one_line


class ModelLoader(QObject):
    """Loads ``(model, gallery)`` pairs in the thread it was moved to."""

    requested = Signal(int, object, object, object)  # request, model path | None, Embedder | None,
                                                     # gallery path
    ready = Signal(int, object)                      # request, Recognizer (embedder, gallery)
    failed = Signal(int, str, object)                # request, message, Embedder | None (loaded)

    def __init__(self, smoothing: int = 3) -> None:
        super().__init__()
        self.smoothing = smoothing  # live view: steadier labels for 2 frames of lag
        self.requested.connect(self._load)  # queued: runs in the loader's thread

    @Slot(int, object, object, object)
    def _load(self, request: int, model: str | None, embedder: Embedder | None,
              gallery: str) -> None:
        """Open ``model`` (unless an ``embedder`` is given), warm it up, open ``gallery``
        and build the recognizer over both."""
        if embedder is None:
            try:
                embedder = Embedder(model)
                embedder.warmup()
            except Exception as exc:  # any failure is reported to the window, never lost here
                emit(self.failed, request, f"cannot open the model: {one_line(exc)}", None)
                return
        opened = None
        try:
            opened = Gallery.open_or_create(gallery, embedder)
            recognizer = Recognizer(embedder, opened, smoothing=self.smoothing,
                                    threshold=opened.threshold)
        except Exception as exc:  # as above: the window shows it and stays usable
            if opened is not None:
                opened.close()
            emit(self.failed, request, f"gallery not usable with this model: {one_line(exc)}",
                 embedder)
            return
        emit(self.ready, request, recognizer)

