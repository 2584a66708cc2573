"""``tledge gallery ACTION``: inspect, edit, calibrate, re-embed, back up a gallery.

Adding an action is one ``_add_<name>(actions, model_args)`` function listed in ``ACTIONS``;
``tledge gallery sync`` is added by the fleet (``tledge.fleet.cli.add_sync_parser``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tledge.cli import common
from tledge.cli.types import cosine, examples, fraction
from tledge.errors import TledgeError

G = "tledge gallery {} -g my-gallery"


def cmd_gallery(args: argparse.Namespace) -> int:
    from tledge.runtime import Gallery

    embedder = common.embedder(args) if args.model else None
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
            _calibrate(gallery, args.far)
        elif args.action == "reembed":
            with common.progress(gallery.info()["samples"], "re-embedding") as bar:
                n = gallery.reembed(embedder, progress=bar.update)
            print(f"re-embedded {n} samples with {embedder.info.describe()}")
    return 0


def _calibrate(gallery, far: float) -> None:
    from tledge.evaluate import calibrate

    res = calibrate(gallery, far)
    gallery.threshold = res["threshold"]
    print(f"threshold set to {res['threshold']:.4f}: accepts {far:.0%} of "
          f"impostors and {res['genuine_accepted']:.0%} of genuine samples "
          f"(leave-one-out over {res['samples']} samples)")


def cmd_backup_or_restore(args: argparse.Namespace) -> int:
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


def _action(actions, name: str, help_: str, *example: str, model_args=None,
            model_required: bool = False):
    a = actions.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                           epilog=examples(*example))
    a.add_argument("--gallery", "-g", type=Path, required=True, help="gallery folder")
    if model_args is not None:
        model_args(a, required=model_required,
                   default_help="default: none; give it to check the gallery was made by it")
    a.set_defaults(func=cmd_gallery)
    return a


def _add_simple(actions, model_args) -> None:
    _action(actions, "info", "print a summary of the gallery as JSON", G.format("info"),
            model_args=model_args)
    _action(actions, "list", "list the classes and their sample counts", G.format("list"),
            model_args=model_args)
    a = _action(actions, "remove", "delete a class and its samples",
                G.format("remove") + " mug", model_args=model_args)
    a.add_argument("label", help="the class to delete")
    a = _action(actions, "rename", "rename a class", G.format("rename") + " mug 'blue mug'",
                model_args=model_args)
    a.add_argument("old", help="the current name")
    a.add_argument("new", help="the new name")


def _add_threshold(actions, model_args) -> None:
    a = _action(actions, "threshold", "show or set the open-set threshold",
                G.format("threshold"), G.format("threshold") + " 0.45", model_args=model_args)
    a.add_argument("value", type=cosine, nargs="?",
                   help="the new threshold, a cosine in [-1, 1] (without it: print the "
                        "current one)")
    a = _action(actions, "calibrate", "set the threshold from the gallery's own samples",
                G.format("calibrate"), G.format("calibrate") + " --far 0.01",
                model_args=model_args)
    a.add_argument("--far", type=fraction, default=0.05,
                   help="false-accept rate to allow, in (0, 1)")


def _add_reembed(actions, model_args) -> None:
    _action(actions, "reembed", "re-embed the stored crops with another model",
            G.format("reembed") + " -m models/new.onnx", model_args=model_args,
            model_required=True)


def _add_backup(actions, model_args) -> None:
    a = _action(actions, "backup", "write a consistent, checked copy of the database",
                G.format("backup") + " /mnt/usb/")
    a.add_argument("output", type=Path,
                   help="the backup file (a folder: FOLDER/gallery.sqlite)")
    a.set_defaults(func=cmd_backup_or_restore)
    a = _action(actions, "restore", "replace the database with a checked backup",
                G.format("restore") + " /mnt/usb/gallery.sqlite")
    a.add_argument("backup", type=Path, help="a file written by `tledge gallery backup`")
    a.set_defaults(func=cmd_backup_or_restore)


ACTIONS = [_add_simple, _add_threshold, _add_reembed, _add_backup]


def add_parser(sub, model_args) -> None:
    from tledge.fleet import cli as cli_fleet

    p = sub.add_parser("gallery", help="inspect or edit a gallery",
                       description="Inspect or edit a gallery; see `tledge gallery ACTION -h`.",
                       epilog=examples(G.format("list"), G.format("calibrate") + " --far 0.01"))
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for add in ACTIONS:
        add(actions, model_args)
    cli_fleet.add_sync_parser(actions, model_args)
