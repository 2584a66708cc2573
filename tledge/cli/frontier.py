"""``tledge eval frontier DATA -m A.onnx -m B.onnx ... [--backbones]``: accuracy against
latency for several models, measured in one run (``tledge.frontier``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tledge.cli.models import WEIGHT_BITS
from tledge.cli.types import NON_NEGATIVE_INT, SEED, examples, positive_int
from tledge.cli_types import threads
from tledge.errors import TledgeError


def cmd_frontier(args: argparse.Namespace) -> int:
    from tledge.frontier import FrontierOptions, frontier, transfer_classes
    from tledge.frontier_report import format_frontier, plot_frontier, write_json

    models = list(args.model or [])
    transfer_classes(args.data, list(args.transfer or []))  # before minutes of exports
    if args.backbones:
        models += _exported_backbones(args)
    if not models:
        raise TledgeError("give models with --model A.onnx --model B.onnx, or --backbones")
    options = FrontierOptions(episodes=args.episodes, all_way_episodes=args.all_way_episodes,
                              query=args.query, seed=args.seed, threads=args.threads,
                              repeats=args.repeats, providers=args.providers, mode=args.mode,
                              metric=args.metric)
    result = frontier(models, args.data, options, args.unknown, args.transfer)
    print(format_frontier(result))
    out = Path(args.output)
    print(f"\nwrote {write_json(result, out / 'frontier.json')}")
    if plot_frontier(result, out / "frontier.png"):
        print(f"wrote {out / 'frontier.png'}")
    else:
        print("plot skipped: matplotlib is not installed (pip install matplotlib)")
    return 0


def _exported_backbones(args: argparse.Namespace) -> list[Path]:
    """Every registered backbone exported in fp32 and int8 into OUTPUT/models (the training
    side: needs torch)."""
    try:
        from tledge.train.zoo import export_backbones
    except ImportError as exc:
        raise TledgeError("--backbones exports models and needs the training side: "
                          "pip install \"tledge[train]\"") from exc
    made = export_backbones(Path(args.output) / "models", calib=args.calib or args.data,
                            gate_images=args.gate_images or args.data,
                            qat_steps=args.qat_steps,
                            reduce_range=WEIGHT_BITS[args.weight_bits])
    for m in made:
        if m["gate"] is not None and not m["gate"]["passed"]:
            print(f"note: {m['int8'].name} failed its int8 gate "
                  f"({'; '.join(m['gate']['failures'])}); measured anyway")
    return [p for m in made for p in (m["fp32"], m["int8"])]


def add_frontier(kinds, model_args) -> None:
    """The ``frontier`` kind of ``tledge eval`` (listed in ``tledge.cli.evaluate.KINDS``)."""
    help_ = "which model to ship: accuracy, open-set AUROC, latency, size and memory"
    a = kinds.add_parser(
        "frontier", help=help_, description=help_[0].upper() + help_[1:] + ", in one run; "
        "a table, OUTPUT/frontier.json and OUTPUT/frontier.png (the Pareto set marked).",
        epilog=examples(
            "tledge eval frontier split/novel -m mobilenet_v2.onnx -m efficientnet_lite0.onnx",
            "tledge eval frontier split/novel --backbones --calib split/base -o frontier/",
            "tledge eval frontier pacs/photo --transfer pacs/sketch --transfer pacs/cartoon "
            "-m a.onnx -m b.onnx --metric 'photo->sketch'"))
    a.add_argument("data", type=Path, help="labelled images: DATA/<class>/*.jpg")
    a.add_argument("--model", "-m", type=Path, action="append",
                   help="exported model (repeat; the first is the paired baseline)")
    a.add_argument("--backbones", action="store_true",
                   help="first export every registered backbone in fp32 and int8 into "
                        "OUTPUT/models (kept for re-runs) and measure them too")
    a.add_argument("--output", "-o", type=Path, default=Path("frontier"),
                   help="folder for frontier.json and frontier.png (default: frontier/)")
    a.add_argument("--providers", default="cpu",
                   help="ONNX Runtime providers (default cpu: the latency of a kiosk)")
    a.add_argument("--threads", type=threads, default=2,
                   help="intra-op threads for the latency (default 2)")
    a.add_argument("--repeats", type=positive_int, default=100,
                   help="timed calls per model at batch 1 (default 100)")
    a.add_argument("--episodes", type=positive_int, default=300,
                   help="episodes of each 5-way task (default 300)")
    a.add_argument("--all-way-episodes", type=positive_int, default=100,
                   help="episodes of the all-way task (default 100)")
    a.add_argument("--query", type=positive_int, default=5, help="queries per class")
    a.add_argument("--seed", type=SEED, default=0, help="random seed of the episodes")
    a.add_argument("--mode", choices=("prototype", "nearest"), default="prototype",
                   help="the gallery's matching (default prototype)")
    a.add_argument("--metric", default="all-way 1-shot",
                   help="the accuracy plotted and used for the Pareto set: 5-way 1-shot, "
                        "all-way 1-shot (default), 5-way 5-shot or a transfer task "
                        "(DATA->TARGET by folder names; quote it in a shell: the > "
                        "redirects)")
    a.add_argument("--transfer", type=Path, action="append",
                   help="another domain with DATA's class folders (repeat): each of its "
                        "images is matched against galleries of every DATA image of its "
                        "class (class means in prototype mode), e.g. DATA=pacs/photo "
                        "--transfer pacs/sketch")
    a.add_argument("--unknown", type=Path,
                   help="images of no class for the AUROC (default: images of classes "
                        "outside each episode)")
    a.add_argument("--calib", type=Path,
                   help="--backbones: int8 calibration images (default: DATA; better: "
                        "classes the frontier does not measure, e.g. split/base)")
    a.add_argument("--gate-images", type=Path, help="--backbones: int8 gate images "
                   "(default: DATA)")
    a.add_argument("--qat-steps", type=NON_NEGATIVE_INT, default=0,
                   help="--backbones: int8-aware distillation steps (default 0: post-training "
                        "int8; 200 takes ~8 min per backbone on 2 CPU cores)")
    a.add_argument("--weight-bits", choices=tuple(WEIGHT_BITS), default="7",
                   help="--backbones: int8 weight bits, as `tledge export --weight-bits` "
                        "(default 7)")
    a.set_defaults(func=cmd_frontier, check=_check_metric)


def _check_metric(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--metric names a task of this run: a usage error before anything is measured."""
    from tledge.frontier import TASKS, transfer_name

    names = [t[0] for t in TASKS] + [transfer_name(args.data, t) for t in args.transfer or []]
    if args.metric not in names:
        parser.error(f"--metric {args.metric!r}: choose one of {', '.join(names)}")
