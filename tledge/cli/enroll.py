"""``tledge enroll``: add classes to a gallery from images (embed and store; no training)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tledge.cli import common
from tledge.cli.types import examples, positive_int

# tledge.runtime.augment.AUGMENTS, spelled out: the parser must not import the runtime
# (ONNX Runtime) just to show --help; a test keeps the two equal.
AUGMENT_CHOICES = ("none", "flip")


def cmd_enroll(args: argparse.Namespace) -> int:
    from tledge.runtime import Gallery
    from tledge.runtime.batch import class_folders, enroll_folder
    from tledge.runtime.gallery import validate_label

    if args.label is not None:
        validate_label(args.label)  # before anything is created on disk
    embedder = common.embedder(args)
    with Gallery.open_or_create(args.gallery, embedder, args.augment,
                                args.augment_queries or None) as gallery:
        if args.folder:
            total = sum(len(f[:args.shots] if args.shots else f)
                        for f in class_folders(args.folder).values())
            with common.progress(total, "enrolling") as bar:
                results = enroll_folder(gallery, args.folder, args.shots, bar.update,
                                        allow_duplicates=args.allow_duplicates)
        else:
            with common.progress(len(args.images), f"enrolling {args.label}") as bar:
                results = [gallery.enroll(args.label, args.images, skip_bad=True,
                                          progress=bar.update,
                                          allow_duplicates=args.allow_duplicates)]
        failed = _print_results(results)
        print(f"gallery {args.gallery}: {len(gallery.labels())} classes "
              f"(model {embedder.info.backbone}, {embedder.provider})")
    return 1 if failed else 0


def _print_results(results) -> int:
    failed = 0
    for res in results:
        again = f" ({res.duplicates} already enrolled, skipped)" if res.duplicates else ""
        print(f"{res.label}: {res.added} samples{again}")
        for name, msg in res.failed:
            print(f"  skipped {name}: {msg}", file=sys.stderr)
            failed += 1
    return failed


def check_enroll(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors argparse cannot express: IMAGE... goes with --label, not --folder."""
    if args.label and not args.images:
        parser.error("enroll --label NAME needs at least one IMAGE")
    if args.folder and args.images:
        parser.error("enroll --folder takes no IMAGE arguments")
    if args.augment_queries and args.augment != "flip":
        parser.error("--augment-queries goes with --augment flip")


def add_parser(sub, model_args) -> None:
    p = sub.add_parser(
        "enroll", help="add classes to a gallery from images (no training)",
        description="Embed images with an exported model and store them in a gallery (created "
                    "if missing). Re-running adds nothing new: pictures a class already holds "
                    "are skipped.",
        epilog=examples(
            "tledge enroll -m models/efficientnet_lite0.onnx -g my-gallery --folder photos/",
            "tledge enroll -m models/efficientnet_lite0.onnx -g my-gallery --label mug a.jpg b.jpg",
            "tledge enroll -m models/efficientnet_lite0.onnx -g new-gallery --augment flip "
            "--folder photos/"))
    model_args(p)
    p.add_argument("--gallery", "-g", type=Path, required=True,
                   help="gallery folder (created when missing)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--folder", type=Path,
                       help="folder of class folders: DIR/<label>/*.jpg, one class per folder")
    group.add_argument("--label", help="the class name of IMAGE...")
    p.add_argument("--shots", type=positive_int,
                   help="with --folder: use the first K images per class (default: all)")
    p.add_argument("images", nargs="*", type=Path, help="with --label: the images to enroll")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="also store pictures the class already holds (without it they are "
                        "skipped, so a run can be repeated safely)")
    p.add_argument("--augment", choices=AUGMENT_CHOICES,
                   help="a new gallery: average each shot's embedding with its mirror image's "
                        "(+0.5 points all-way 1-shot, measured; default none). Fixed when the "
                        "gallery is created")
    p.add_argument("--augment-queries", action="store_true",
                   help="with --augment flip: embed queries the same way too (+0.9 points, "
                        "at twice the inference per frame). Set when the gallery is created")
    p.set_defaults(func=cmd_enroll, check=check_enroll)
