"""``tledge gui`` / ``tledge-gui``: start the desktop app (or ``--kiosk``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from tledge_gui.main_window import MainWindow


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--roi wants X,Y,W,H in pixels, got {text!r}") from exc
    return x, y, w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tledge-gui", description="Enroll and recognise objects live.")
    p.add_argument("--model", "-m", help="exported .onnx model (default: the last one used)")
    p.add_argument("--gallery", "-g", help="gallery folder (created if missing)")
    p.add_argument("--source", "-s", help="webcam index (0), video file or image folder")
    p.add_argument("--kiosk", action="store_true", help="full screen, enrollment locked")
    p.add_argument("--pin", help="kiosk: PIN that unlocks enrollment (Ctrl+E)")
    p.add_argument("--roi", type=_roi, help="region of interest in frame pixels: X,Y,W,H")
    p.add_argument("--screenshot", type=Path, help="save the window after the first result")
    p.add_argument("--exit-after", type=float, help="quit after this many seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    app = QApplication.instance() or QApplication([sys.argv[0]])
    settings = QSettings("tledge", "tledge-gui")
    source = args.source or settings.value("source", "0")
    model = args.model or settings.value("model")
    gallery = args.gallery or (settings.value("gallery") if not args.model else None)
    window = MainWindow(str(source), model, gallery, kiosk=args.kiosk, pin=args.pin,
                        settings=settings)
    if args.roi:
        window.set_roi(args.roi)
    if settings.value("geometry") is not None and not args.kiosk:
        window.restoreGeometry(settings.value("geometry"))
    if args.screenshot:
        window.first_result_callbacks.append(
            lambda: QTimer.singleShot(200, lambda: window.grab().save(str(args.screenshot))))
    if args.exit_after:
        QTimer.singleShot(int(args.exit_after * 1000), window.close)
    if args.kiosk:
        window.showFullScreen()
    else:
        window.resize(1180, 700)
        window.show()
    code = app.exec()
    # Tear the widgets down while Python is fully alive: PySide6 6.12 can abort in its own
    # finaliser ("bool_dealloc") if they are left to interpreter shutdown.
    window.deleteLater()
    app.processEvents()
    window = None  # drop the last reference before the application shuts down
    app.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
