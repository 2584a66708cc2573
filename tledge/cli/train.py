"""Training: ``tledge finetune``, ``adapt``, ``multitask``, ``split-classes``, ``split-images``.

The training options default to None here so that the library's config dataclass decides
(``FinetuneConfig`` and friends); their help states those defaults, written out because the
parser is built without importing torch (``tests/test_cli_help.py`` checks they agree).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from tledge.cli.types import (
    AT_LEAST_TWO,
    NON_NEGATIVE,
    SEED,
    examples,
    fraction,
    positive_float,
    positive_int,
    task_weights,
)
from tledge.errors import TledgeError

# option: (type, help); the default is per command, in DEFAULTS
OPTIONS = {
    "unfreeze": (positive_int, "how many final stages of the backbone train"),
    "epochs": (positive_int, "training epochs"),
    "steps-per-epoch": (positive_int, "optimiser steps per epoch"),
    "batch": (AT_LEAST_TWO, "images per step, at least 2"),
    "lr": (positive_float, "learning rate of the new layers"),
    "backbone-lr-mult": (NON_NEGATIVE, "the pretrained stages' learning rate, as a multiple "
                                       "of --lr"),
    "weight-decay": (NON_NEGATIVE, "AdamW weight decay"),
    "way": (AT_LEAST_TWO, "classes per batch, at least 2"),
    "anchor": (NON_NEGATIVE, "weight of 1 - cos(new, pretrained embedding): keeps what "
                             "ImageNet taught while adapting (0: off)"),
    "shot": (positive_int, "images per class in a batch (proto: the support shots)"),
    "query": (positive_int, "proto: query images per class"),
    "views": (positive_int, "augmented views cached per image"),
    "val-fraction": (fraction, "share of images held out for validation, in (0, 1)"),
    "patience": (positive_int, "stop after N epochs without a better validation accuracy"),
    "seed": (SEED, "random seed (sampling, augmentation, initialisation)"),
    "trade-off": (NON_NEGATIVE, "weight of the alignment loss"),
}
# The config dataclasses' defaults (FinetuneConfig, AdaptConfig, MultitaskConfig).
_COMMON = {"backbone": "mobilenet_v2", "seed": 0, "device": "auto", "views": 2,
           "val-fraction": 0.2, "backbone-lr-mult": 0.1}
DEFAULTS = {
    "finetune": {**_COMMON, "mode": "partial", "unfreeze": 2, "objective": "proto",
                 "epochs": 12, "steps-per-epoch": 40, "lr": 1e-4, "weight-decay": 1e-4,
                 "way": 16, "shot": 4, "query": 4, "anchor": 1.0, "patience": 4},
    "adapt": {**_COMMON, "method": "dann", "unfreeze": 4, "epochs": 10, "steps-per-epoch": 40,
              "batch": 32, "lr": 1e-3, "weight-decay": 5e-4, "select": "last",
              "trade-off": "the method's own: dann 0.3, coral 1.0, mcc 1.0"},
    "multitask": {**_COMMON, "unfreeze": 2, "epochs": 6, "steps-per-epoch": 30, "batch": 48,
                  "lr": 1e-3, "weight-decay": 1e-4, "weighting": "uncertainty"},
}
RUN_HELP = "run directory: config.json, metrics.csv, plots and the checkpoints"
EXPORT_HINT = "export it with: tledge export --checkpoint {} --output model.onnx"


def _options(p: argparse.ArgumentParser, command: str, names: tuple[str, ...]) -> None:
    for name in names:
        kind, text = OPTIONS[name]
        p.add_argument(f"--{name}", type=kind, dest=name.replace("-", "_"),
                       help=f"{text} (default: {DEFAULTS[command][name]})")


def _choice(p: argparse.ArgumentParser, command: str, name: str, choices, text: str) -> None:
    p.add_argument(f"--{name}", choices=choices,
                   help=f"{text} (default: {DEFAULTS[command][name]})")


def _shared(p: argparse.ArgumentParser, command: str, weights: bool = True) -> None:
    p.add_argument("--backbone", help="a name from `tledge backbones` or a torchvision model "
                                      f"(default: {DEFAULTS[command]['backbone']})")
    _choice(p, command, "device", ("auto", "cpu", "cuda"),
            "where to train; auto: CUDA when available")
    if weights:
        p.add_argument("--weights", help="start from this state dict instead of the "
                                         "published weights (default: the published ones)")


def _config_args(cls, args: argparse.Namespace) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _done(summary: dict, run_dir: Path) -> int:
    print(json.dumps(summary, indent=2))
    print(EXPORT_HINT.format(run_dir))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from tledge.train.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(**_config_args(FinetuneConfig, args))
    return _done(finetune(args.data, args.output, config, resume=args.resume), args.output)


def cmd_adapt(args: argparse.Namespace) -> int:
    from tledge.train.adapt import AdaptConfig, adapt

    config = AdaptConfig(**_config_args(AdaptConfig, args))
    return _done(adapt(args.source, args.target, args.output, config, args.target_eval,
                       args.cache_dir), args.output)


def cmd_multitask(args: argparse.Namespace) -> int:
    from tledge.train.multitask import MultitaskConfig, TaskSpec, multitask

    if (args.spec is None) == (args.tree is None):
        raise TledgeError("give a task CSV (SPEC) or --tree ROOT --levels a,b, not both")
    if args.tree is not None:
        if not args.levels:
            raise TledgeError("--tree needs --levels, e.g. --levels domain,class")
        spec = TaskSpec.from_tree(args.tree, [s.strip() for s in args.levels.split(",")])
    else:
        spec = TaskSpec.from_csv(args.spec)
    values = _config_args(MultitaskConfig, args)
    if args.task_weights:
        values["task_weights"] = args.task_weights
    return _done(multitask(spec, args.output, MultitaskConfig(**values)), args.output)


def cmd_split(args: argparse.Namespace) -> int:
    from tledge.train.data import split_classes, split_images

    if args.command == "split-classes":
        base, novel = split_classes(args.data, args.fraction, args.seed, args.output)
        print(f"{args.output / 'base'}: {len(base)} classes; {args.output / 'novel'}: "
              f"{len(novel)} classes (symbolic links)")
    else:
        a, b = split_images(args.data, args.fraction, args.seed, args.output)
        print(f"{args.output / 'adapt'}: {a} images; {args.output / 'eval'}: {b} images "
              f"(symbolic links, every class split {args.fraction:.0%} / "
              f"{1 - args.fraction:.0%})")
    return 0


def _add_finetune(sub, model_args) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a backbone on DATA/<class>/*.jpg",
        description="Fine-tune a backbone for better embeddings of your classes; the best "
                    "epoch by validation accuracy is kept.",
        epilog=examples("tledge finetune split/base -o runs/proto --objective proto",
                        "torchrun --nproc-per-node 2 -m tledge.cli finetune data/ -o runs/ddp"))
    p.add_argument("data", type=Path, help="DATA/<class>/*.jpg")
    p.add_argument("--output", "-o", type=Path, required=True, help=RUN_HELP)
    _choice(p, "finetune", "mode", ("head", "partial", "full"),
            "head: a classifier on frozen features; partial: also the last --unfreeze "
            "stages; full: every layer")
    _choice(p, "finetune", "objective", ("ce", "proto", "supcon", "cosface"),
            "loss: cross-entropy, prototypical episodes, supervised contrastive or CosFace")
    _options(p, "finetune", ("unfreeze", "epochs", "steps-per-epoch", "lr", "backbone-lr-mult",
                             "weight-decay", "way", "anchor", "shot", "query", "views",
                             "val-fraction", "patience", "seed"))
    _shared(p, "finetune")
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/last.pt (without it: a fresh run)")
    p.set_defaults(func=cmd_finetune)


def _add_splits(sub, model_args) -> None:
    for name, text, share, default, example in (
            ("split-classes", "split a dataset's classes into base/ and novel/",
             "share of classes in base/", 0.67, "tledge split-classes data/ -o split"),
            ("split-images", "split every class's images in two: adapt/ and eval/",
             "share of each class's images in adapt/", 0.5,
             "tledge split-images target/ -o target-split --fraction 0.5")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] +
                           " (symbolic links; the data is not copied).",
                           epilog=examples(example))
        p.add_argument("data", type=Path, help="DATA/<class>/*.jpg")
        p.add_argument("--output", "-o", type=Path, required=True,
                       help="folder to create the two halves in")
        p.add_argument("--fraction", type=fraction, default=default, help=f"{share}, in (0, 1)")
        p.add_argument("--seed", type=SEED, default=0, help="random seed of the split")
        p.set_defaults(func=cmd_split)


def _add_adapt(sub, model_args) -> None:
    p = sub.add_parser(
        "adapt", help="adapt a model from labelled source to unlabelled target images "
                      "(domain adaptation)",
        description="Unsupervised domain adaptation: labelled source images, unlabelled "
                    "target images; target labels are only ever used to report accuracy.",
        epilog=examples("tledge adapt --source pacs/photo --target split/adapt --target-eval "
                        "split/eval -o runs/dann --method dann"))
    p.add_argument("--source", type=Path, required=True, help="labelled: SOURCE/<class>/*.jpg")
    p.add_argument("--target", type=Path, required=True,
                   help="target-domain images (any layout; labels, if any, are ignored)")
    p.add_argument("--target-eval", type=Path,
                   help="labelled target images, only to report accuracy, never trained on "
                        "(default: no target accuracy reported)")
    p.add_argument("--output", "-o", type=Path, required=True, help=RUN_HELP)
    _choice(p, "adapt", "method", ("none", "dann", "coral", "mcc", "adabn"),
            "alignment: none (source only), dann, coral, mcc or adabn")
    p.add_argument("--cache-dir", type=Path,
                   help="keep the frozen trunk's features here and reuse them across runs "
                        "(default: computed for this run only)")
    _choice(p, "adapt", "select", ("last", "source", "im"),
            "checkpoint kept, chosen without target labels: the last epoch, the best "
            "held-out source accuracy, or information maximisation")
    _options(p, "adapt", ("unfreeze", "epochs", "steps-per-epoch", "batch", "lr",
                          "backbone-lr-mult", "weight-decay", "trade-off", "views",
                          "val-fraction", "seed"))
    _shared(p, "adapt")
    p.set_defaults(func=cmd_adapt)


def _add_multitask(sub, model_args) -> None:
    p = sub.add_parser(
        "multitask", help="train one backbone with a head per task",
        description="One shared backbone, one classification head per task (each exported "
                    "as a named output).",
        epilog=examples("tledge multitask tasks.csv -o runs/mt",
                        "tledge multitask --tree pacs-tree --levels domain,class -o runs/mt"))
    p.add_argument("spec", type=Path, nargs="?",
                   help="CSV: image,task1,task2,... (paths relative to the CSV); or --tree")
    p.add_argument("--tree", type=Path,
                   help="instead of a CSV: ROOT/<level1>/<level2>/*.jpg (needs --levels)")
    p.add_argument("--levels", help="with --tree: task names of the folder levels, e.g. "
                                    "domain,class")
    p.add_argument("--output", "-o", type=Path, required=True, help=RUN_HELP)
    _choice(p, "multitask", "weighting", ("fixed", "uncertainty"),
            "how task losses are combined: fixed --task-weights or learned uncertainty")
    p.add_argument("--task-weights", type=task_weights,
                   help="fixed weighting: comma-separated weights >= 0, one per task "
                        "(default: all 1)")
    _options(p, "multitask", ("unfreeze", "epochs", "steps-per-epoch", "batch", "lr",
                              "backbone-lr-mult", "weight-decay", "views", "val-fraction",
                              "seed"))
    _shared(p, "multitask", weights=False)
    p.set_defaults(func=cmd_multitask)


def add_parser(sub, model_args) -> None:
    for add in (_add_finetune, _add_splits, _add_adapt, _add_multitask):
        add(sub, model_args)
