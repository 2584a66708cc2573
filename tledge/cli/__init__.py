"""The ``tledge`` command. Thin: each subcommand parses arguments and calls the library.

One module per command group, each with ``add_parser(sub, model_args)``; ``COMMANDS`` lists
them in the order ``tledge --help`` shows. Exit codes: 0 success, 1 an error (one line;
traceback with --debug), 2 a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tledge.cli import bench, common, demo, enroll, evaluate, gallery, models, recognize, train
from tledge.cli.types import ArgumentParser, examples
from tledge.errors import TledgeError

log = logging.getLogger("tledge")


def _kiosk(sub, model_args) -> None:
    from tledge.kiosk import cli as cli_kiosk

    cli_kiosk.add_parser(sub, model_args)


def _hub(sub, model_args) -> None:
    from tledge.fleet import cli as cli_fleet

    cli_fleet.add_parsers(sub, model_args)


COMMANDS = [models.add_parser, enroll.add_parser, recognize.add_parser, gallery.add_parser,
            _kiosk, _hub, train.add_parser, evaluate.add_parser, bench.add_parser,
            demo.add_parser]
DESCRIPTION = ("tledge: enroll and recognise objects with self-describing ONNX embedding "
               "models; train, export and benchmark them. `tledge COMMAND -h` explains each "
               "command.")
EPILOG = examples("tledge demo", "tledge enroll -m model.onnx -g my-gallery --folder photos/",
                  "tledge recognize -m model.onnx -g my-gallery 0")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="tledge", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action=common.VersionAction)
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug logs (without it: one-line errors)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="only warnings and errors, no progress bars (without it: "
                             "progress on a terminal)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub, common.model_args)
    return parser


GLOBAL_FLAGS = {"--debug": "debug", "--quiet": "quiet", "-q": "quiet"}


def _split_gui(argv: list[str]) -> tuple[dict[str, bool], list[str]] | None:
    """(global flags, app arguments) when ``argv`` is ``[GLOBAL FLAGS...] gui ARGS``.

    The app has its own parser, so everything after ``gui`` is handed over untouched; only
    the global flags before it are read here (argparse would reject the app's options).
    """
    flags = {"debug": False, "quiet": False}
    for i, arg in enumerate(argv):
        if arg == "gui":
            return flags, argv[i + 1:]
        if arg not in GLOBAL_FLAGS:
            return None
        flags[GLOBAL_FLAGS[arg]] = True
    return None


def _setup_logging(debug: bool, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tledge: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    gui = _split_gui(argv)
    if gui is not None:
        _setup_logging(**gui[0])
        return demo.run_gui(gui[1])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "check", None) is not None:
        args.check(parser, args)
    _setup_logging(args.debug, args.quiet)
    try:
        with common.quiet_progress(args.quiet):
            return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except TledgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the CLI's last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


__all__ = ["build_parser", "main"]
