"""``tledge gui`` / ``tledge-gui``: start the desktop app (or ``--kiosk``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from tledge.cli_types import ArgumentParser, examples, positive_float
from tledge.errors import TledgeError
from tledge_gui.main_window import MainWindow
from tledge_gui.pin import PIN_ENV, read_pin

PIN_ON_ARGV = (f"--pin would show the PIN to every user of this machine (ps, /proc); put it "
               f"in a file only you can read and pass --pin-file FILE, or set ${PIN_ENV}")


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--roi wants X,Y,W,H in pixels, got {text!r}") from exc
    if x < 0 or y < 0 or w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"--roi {text}: X and Y must be >= 0, W and H >= 8")
    return x, y, w, h


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="tledge-gui", description="Enroll and recognise objects live.",
                       epilog=examples("tledge-gui -m models/mobilenet_v2.onnx -g my-gallery",
                                       "tledge-gui --kiosk --pin-file ~/.tledge-pin -s 0"))
    p.add_argument("--model", "-m", help="exported .onnx model (default: the last one used)")
    p.add_argument("--gallery", "-g", help="gallery folder, created if missing (default: "
                                           "the last one used with this model)")
    p.add_argument("--source", "-s", help="webcam index, video file or image folder "
                                          "(default: the last one used, else webcam 0)")
    p.add_argument("--kiosk", action="store_true",
                   help="full screen, enrollment locked (without it: a normal window)")
    p.add_argument("--pin-file", type=Path,
                   help=f"kiosk: file (mode 600) whose first line is the PIN that unlocks "
                        f"enrollment (Ctrl+E); or set ${PIN_ENV} (default: no PIN)")
    p.add_argument("--pin", help=argparse.SUPPRESS)  # refused: see PIN_ON_ARGV
    p.add_argument("--roi", type=_roi, help="region of interest in frame pixels: X,Y,W,H "
                                            "(default: the whole frame)")
    p.add_argument("--screenshot", type=Path,
                   help="save the window here after the first result (default: none)")
    p.add_argument("--exit-after", type=positive_float,
                   help="quit after this many seconds (default: run until closed)")
    p.add_argument("--hub", metavar="DSN",
                   help="share the gallery with a fleet through this PostgreSQL hub (password "
                        "from ~/.pgpass, $PGPASSWORD or a service file, never the command "
                        "line; default: a stand-alone gallery)")
    p.add_argument("--device-name", help="with --hub: this device's name in `tledge hub "
                                         "status` (default: device-<id>)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pin is not None:
        parser.error(PIN_ON_ARGV)
    try:
        pin = read_pin(args.pin_file)
    except TledgeError as exc:
        parser.error(str(exc))
    app = QApplication.instance() or QApplication([sys.argv[0]])
    settings = QSettings("tledge", "tledge-gui")
    source = args.source or settings.value("source", "0")
    model = args.model or settings.value("model")
    gallery = args.gallery or (settings.value("gallery") if not args.model else None)
    window = MainWindow(str(source), model, gallery, kiosk=args.kiosk, pin=pin,
                        settings=settings)
    if args.hub:
        from tledge_gui.fleet import FleetLink

        window.fleet = FleetLink(window, args.hub, args.device_name)
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
    if getattr(window, "fleet", None) is not None:
        window.fleet.stop()
    # Tear the widgets down while Python is fully alive: PySide6 6.12 can abort in its own
    # finaliser ("bool_dealloc") if they are left to interpreter shutdown.
    window.deleteLater()
    app.processEvents()
    window = None  # drop the last reference before the application shuts down
    app.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
