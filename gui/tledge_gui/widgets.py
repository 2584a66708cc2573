"""Display widgets: the live video with its overlay, and the gallery's list model."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget

from tledge.runtime import Gallery
from tledge_gui.signals import emit


def to_qimage(rgb: np.ndarray) -> QImage:
    """An RGB uint8 (H, W, 3) array as a QImage that owns its pixels."""
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class VideoView(QWidget):
    """The current frame, scaled to fit, with the result drawn over it and a draggable ROI."""

    roi_changed = Signal(object)  # (x, y, w, h) in frame pixels, or None

    def __init__(self, big_text: bool = False) -> None:
        super().__init__()
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(QSize(320, 240))
        self.image: QImage | None = None
        self.text, self.known, self.detail = "no frame yet", False, ""
        self.big_text = big_text
        self.roi: tuple[int, int, int, int] | None = None
        self._drag: QPoint | None = None

    def show_frame(self, rgb: np.ndarray, text: str, known: bool, detail: str) -> None:
        self.image = to_qimage(rgb)
        self.text, self.known, self.detail = text, known, detail
        self.update()

    def _target(self) -> QRect:
        if self.image is None:
            return self.rect()
        size = self.image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        return QRect(QPoint((self.width() - size.width()) // 2,
                            (self.height() - size.height()) // 2), size)

    def _to_frame(self, p: QPoint) -> tuple[int, int]:
        t = self._target()
        sx = self.image.width() / max(1, t.width())
        sy = self.image.height() / max(1, t.height())
        return int((p.x() - t.x()) * sx), int((p.y() - t.y()) * sy)

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(20, 20, 20))
        target = self._target()
        if self.image is not None:
            painter.drawImage(target, self.image)
        if self.roi and self.image is not None:
            x, y, w, h = self.roi
            s = target.width() / self.image.width()
            painter.setPen(QPen(QColor(255, 200, 0), 2, Qt.PenStyle.DashLine))
            painter.drawRect(QRect(int(target.x() + x * s), int(target.y() + y * s),
                                   int(w * s), int(h * s)))
        font = QFont(self.font())
        font.setPointSize(36 if self.big_text else 18)
        font.setBold(True)
        painter.setFont(font)
        band = QRect(target.x(), target.bottom() - (110 if self.big_text else 60),
                     target.width(), 110 if self.big_text else 60)
        painter.fillRect(band, QColor(0, 0, 0, 160))
        painter.setPen(QColor(90, 220, 110) if self.known else QColor(240, 240, 240))
        painter.drawText(band.adjusted(12, 0, -12, -18 if self.big_text else -10),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, self.text)
        font.setPointSize(14 if self.big_text else 9)
        font.setBold(False)
        painter.setFont(font)
        painter.setPen(QColor(200, 200, 200))
        painter.drawText(band.adjusted(12, 0, -12, -4),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom, self.detail)
        painter.end()

    def mousePressEvent(self, event) -> None:
        if self.image is not None and event.button() == Qt.MouseButton.LeftButton:
            self._drag = event.position().toPoint()

    def mouseMoveEvent(self, event) -> None:
        if self._drag is not None:
            self._set_roi(self._drag, event.position().toPoint(), notify=False)

    def mouseReleaseEvent(self, event) -> None:
        if self._drag is not None:
            self._set_roi(self._drag, event.position().toPoint(), notify=True)
            self._drag = None

    def _set_roi(self, a: QPoint, b: QPoint, notify: bool) -> None:
        (x0, y0), (x1, y1) = self._to_frame(a), self._to_frame(b)
        x0, x1 = sorted((max(0, x0), min(self.image.width(), x1)))
        y0, y1 = sorted((max(0, y0), min(self.image.height(), y1)))
        self.roi = (x0, y0, x1 - x0, y1 - y0) if x1 - x0 >= 16 and y1 - y0 >= 16 else None
        self.update()
        if notify:
            emit(self.roi_changed, self.roi)


class GalleryModel(QAbstractListModel):
    """The gallery's classes: label, shot count and a thumbnail of the first shot."""

    def __init__(self) -> None:
        super().__init__()
        self.gallery: Gallery | None = None
        self.rows: list[tuple[str, int, QPixmap | None]] = []

    def refresh(self, gallery: Gallery | None) -> None:
        self.beginResetModel()
        self.gallery = gallery
        self.rows = []
        if gallery is not None:
            for info in gallery.classes():
                crops = gallery.crops(info.label)[:1]
                pix = None
                if crops:
                    pix = QPixmap()
                    pix.loadFromData(crops[0])
                    pix = pix.scaled(48, 48, Qt.AspectRatioMode.KeepAspectRatio,
                                     Qt.TransformationMode.SmoothTransformation)
                self.rows.append((info.label, info.samples, pix))
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        label, count, pix = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return f"{label}  ({count} shot{'s' if count != 1 else ''})"
        if role == Qt.ItemDataRole.DecorationRole:
            return pix
        if role == Qt.ItemDataRole.UserRole:
            return label
        return None
