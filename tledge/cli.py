"""The ``tledge`` command. Thin: each subcommand parses arguments and calls the library.

Exit codes: 0 success, 1 an error (one line; traceback with --debug), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from tledge import __version__
from tledge.cli_types import cosine, fraction, positive_int
from tledge.errors import TledgeError

log = logging.getLogger("tledge")


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", "-m", type=Path, required=required, help="exported .onnx model")
    p.add_argument("--providers", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="ONNX Runtime intra-op threads (at least 1)")


def _embedder(args):
    from tledge.runtime import Embedder

    return Embedder(args.model, providers=args.providers, threads=args.threads)


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False)


# -- subcommands ---------------------------------------------------------------------------

def cmd_backbones(args) -> int:
    from tledge.train.backbones import get_spec, list_backbones

    for name in list_backbones():
        spec = get_spec(name)
        print(f"{name:20} {spec.dim:5}-d  {spec.preprocess.crop_size}px  {spec.summary}")
    print("\nAny torchvision classification model name also works (weights from the torch hub "
          "cache, or --allow-download).")
    return 0


def cmd_enroll(args) -> int:
    from tledge.runtime import Gallery
    from tledge.runtime.batch import class_folders, enroll_folder
    from tledge.runtime.gallery import validate_label

    if args.label is not None:
        validate_label(args.label)  # before anything is created on disk
    embedder = _embedder(args)
    with Gallery.open_or_create(args.gallery, embedder) as gallery:
        if args.folder:
            total = sum(len(f[:args.shots] if args.shots else f)
                        for f in class_folders(args.folder).values())
            with _progress(total, "enrolling") as bar:
                results = enroll_folder(gallery, args.folder, args.shots, bar.update,
                                        allow_duplicates=args.allow_duplicates)
        else:
            with _progress(len(args.images), f"enrolling {args.label}") as bar:
                results = [gallery.enroll(args.label, args.images, skip_bad=True,
                                          progress=bar.update,
                                          allow_duplicates=args.allow_duplicates)]
        failed = 0
        for res in results:
            again = f" ({res.duplicates} already enrolled, skipped)" if res.duplicates else ""
            print(f"{res.label}: {res.added} samples{again}")
            for name, msg in res.failed:
                print(f"  skipped {name}: {msg}", file=sys.stderr)
                failed += 1
        print(f"gallery {args.gallery}: {len(gallery.labels())} classes "
              f"(model {embedder.info.backbone}, {embedder.provider})")
    return 1 if failed else 0


def cmd_recognize(args) -> int:
    from tledge.runtime import Gallery, Recognizer
    from tledge.runtime.batch import recognize_sources

    embedder = _embedder(args)
    embedder.warmup()  # so the first image's reported latency is not the session's start-up
    with Gallery.open(args.gallery, embedder) as gallery:
        recognizer = Recognizer(embedder, gallery, args.smoothing, args.threshold, mode=args.mode)
        errors = 0
        for item in recognize_sources(recognizer, args.sources, args.max_frames, args.every):
            errors += item.error is not None
            if args.json:
                print(json.dumps(item.to_dict(), ensure_ascii=False), flush=True)
            elif item.error:
                print(f"error: {item.error}", file=sys.stderr)
            else:
                r = item.result
                label = r.label if r.label is not None else f"unknown (closest: {r.candidate})"
                print(f"{item.name}: {label}  score {r.score:.3f}  {r.latency_ms:.1f} ms",
                      flush=True)
    return 1 if errors else 0


def cmd_gallery(args) -> int:
    from tledge.runtime import Gallery

    if args.action in ("backup", "restore"):
        return _backup_or_restore(args)
    embedder = _embedder(args) if args.model else None
    if args.action == "reembed" and embedder is None:
        raise TledgeError("gallery reembed needs --model NEW_MODEL.onnx")
    with Gallery.open(args.gallery, None if args.action == "reembed" else embedder) as gallery:
        if args.action == "info":
            print(json.dumps(gallery.info(), indent=2, ensure_ascii=False))
        elif args.action == "list":
            for c in gallery.classes():
                print(f"{c.label}\t{c.samples}")
        elif args.action == "remove":
            gallery.remove(args.label)
            print(f"removed {args.label!r}")
        elif args.action == "rename":
            gallery.rename(args.old, args.new)
            print(f"renamed {args.old!r} to {args.new!r}")
        elif args.action == "threshold":
            if args.value is not None:
                gallery.threshold = args.value
            print(f"threshold {gallery.threshold:.4f}")
        elif args.action == "calibrate":
            from tledge.evaluate import calibrate

            res = calibrate(gallery, args.far)
            gallery.threshold = res["threshold"]
            print(f"threshold set to {res['threshold']:.4f}: accepts {args.far:.0%} of "
                  f"impostors and {res['genuine_accepted']:.0%} of genuine samples "
                  f"(leave-one-out over {res['samples']} samples)")
        elif args.action == "reembed":
            n = gallery.reembed(embedder)
            print(f"re-embedded {n} samples with {embedder.info.describe()}")
    return 0


def _backup_or_restore(args) -> int:
    from tledge.runtime import gallery_backup

    if args.action == "backup":
        out = gallery_backup.backup(args.gallery, args.output)
        print(f"backed up {args.gallery} to {out['path']}: {out['classes']} classes, "
              f"{out['samples']} samples, {out['bytes'] / 1e6:.1f} MB (integrity checked)")
    else:
        out = gallery_backup.restore(args.backup, args.gallery)
        print(f"restored {args.gallery} from {args.backup}: {out['classes']} classes, "
              f"{out['samples']} samples")
    return 0


def cmd_demo(args) -> int:
    from tledge.demo import format_report, run_demo

    report = run_demo(args.workdir, args.backbone, args.model, args.providers, args.threads)
    print(format_report(report))
    return 0


def run_gui(gui_args: list[str]) -> int:
    """``tledge gui ARGS``: hand every argument to the app's own parser."""
    import importlib

    try:  # imported by name: the tledge package itself never imports PySide6
        app = importlib.import_module("tledge_gui.app")
    except ImportError as exc:
        print(f"error: the desktop app needs the gui extra: pip install \"tledge[gui]\" ({exc})",
              file=sys.stderr)
        return 1
    return app.main(gui_args)


# -- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tledge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tledge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backbones", help="list the available backbones")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("enroll", help="add classes to a gallery from images (no training)")
    _model_args(p)
    p.add_argument("--gallery", "-g", type=Path, required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--folder", type=Path, help="folder of class folders: DIR/<label>/*.jpg")
    group.add_argument("--label", help="the label of IMAGE...")
    p.add_argument("--shots", type=positive_int,
                   help="with --folder: use the first K images per class")
    p.add_argument("images", nargs="*", type=Path, help="with --label: the images")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="also store pictures the class already holds (default: skip them, "
                        "so a run can be repeated safely)")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("recognize", help="recognise images, folders, videos or a webcam")
    _model_args(p)
    p.add_argument("--gallery", "-g", type=Path, required=True)
    p.add_argument("sources", nargs="+", help="image, folder, video file or webcam index")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--threshold", type=cosine,
                   help="override the gallery's threshold (a cosine in [-1, 1])")
    p.add_argument("--mode", choices=("prototype", "nearest"), default="prototype")
    p.add_argument("--smoothing", type=positive_int, default=1, help="average over N frames")
    p.add_argument("--max-frames", type=positive_int, help="stop each source after N frames")
    p.add_argument("--every", type=positive_int, default=1, help="use every Nth frame of a video")
    p.set_defaults(func=cmd_recognize)

    p = sub.add_parser("gallery", help="inspect or edit a gallery")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_ in (("info", "summary as JSON"), ("list", "classes and sample counts"),
                        ("remove", "delete a class"), ("rename", "rename a class"),
                        ("threshold", "show or set the open-set threshold"),
                        ("calibrate", "set the threshold from the gallery's own samples"),
                        ("reembed", "re-embed stored crops with another model"),
                        ("backup", "write a consistent, checked copy of the database"),
                        ("restore", "replace the database with a checked backup")):
        a = actions.add_parser(name, help=help_)
        a.add_argument("--gallery", "-g", type=Path, required=True)
        a.set_defaults(func=cmd_gallery)
        if name in ("backup", "restore"):
            a.add_argument(*(["output"] if name == "backup" else ["backup"]), type=Path,
                           help="the backup file (a folder: FOLDER/gallery.sqlite)"
                           if name == "backup" else "a file written by `gallery backup`")
            continue
        _model_args(a, required=name == "reembed")
        if name == "remove":
            a.add_argument("label")
        elif name == "rename":
            a.add_argument("old")
            a.add_argument("new")
        elif name == "threshold":
            a.add_argument("value", type=cosine, nargs="?", help="a cosine in [-1, 1]")
        elif name == "calibrate":
            a.add_argument("--far", type=fraction, default=0.05,
                           help="false-accept rate to allow, in (0, 1) (default 0.05)")

    from tledge import cli_models, cli_train
    from tledge.fleet import cli as cli_fleet
    from tledge.kiosk import cli as cli_kiosk

    cli_fleet.add_sync_parser(actions, _model_args)
    cli_models.add_export_parsers(sub)
    cli_kiosk.add_parser(sub, _model_args)
    cli_fleet.add_parsers(sub, _model_args)
    cli_train.add_parsers(sub, _model_args)

    p = sub.add_parser("demo", help="run the end-to-end demo on the shipped sample images")
    p.add_argument("--workdir", type=Path, default=Path("tledge-demo"))
    p.add_argument("--backbone", default="mobilenet_v2")
    _model_args(p, required=False)
    p.set_defaults(func=cmd_demo)

    sub.add_parser("gui", help="the desktop app (see tledge gui --help)", add_help=False)
    cli_models.add_bench_parser(sub)

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
        return run_gui(gui[1])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "enroll" and args.label and not args.images:
        parser.error("enroll --label NAME needs at least one IMAGE")
    if args.command == "enroll" and args.folder and args.images:
        parser.error("enroll --folder takes no IMAGE arguments")
    _setup_logging(args.debug, args.quiet)
    try:
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


if __name__ == "__main__":
    sys.exit(main())
