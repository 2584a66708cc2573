"""``tledge demo`` (the end-to-end tour on the shipped samples) and ``tledge gui``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from tledge.artifact import DEFAULT_BACKBONE
from tledge.cli.types import examples


def cmd_demo(args: argparse.Namespace) -> int:
    from tledge.demo import format_report, run_demo

    report = run_demo(args.workdir, args.backbone, args.model, args.providers, args.threads)
    print(format_report(report))
    return 0


def run_gui(gui_args: list[str]) -> int:
    """``tledge gui ARGS``: hand every argument to the app's own parser."""
    try:  # imported by name: the tledge package itself never imports PySide6
        app = importlib.import_module("tledge_gui.app")
    except ImportError as exc:
        print(f"error: the desktop app needs the gui extra: pip install \"tledge[gui]\" ({exc})",
              file=sys.stderr)
        return 1
    return app.main(gui_args)


def add_parser(sub, model_args) -> None:
    p = sub.add_parser(
        "demo", help="run the end-to-end demo on the shipped sample images",
        description="Export a backbone (unless --model), enroll the sample classes, recognise "
                    "the held-out sample photos and print what happened.",
        epilog=examples("tledge demo", "tledge demo --backbone mobilenet_v2",
                        "tledge demo --model models/efficientnet_lite0.onnx"))
    p.add_argument("--workdir", type=Path, default=Path("tledge-demo"),
                   help="where the model and the demo gallery are written")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"backbone to export when no --model is given (default: "
                        f"{DEFAULT_BACKBONE})")
    model_args(p, required=False, default_help="default: export --backbone into --workdir")
    # `tledge gui ...` never reaches this parser (main hands it to the app); it is listed so
    # that `tledge --help` shows it.
    sub.add_parser("gui", add_help=False,
                   help="the desktop app: enroll and recognise live (see tledge gui --help)")
    p.set_defaults(func=cmd_demo)
