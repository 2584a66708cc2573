"""CLI subcommands for training and evaluation: finetune, split-classes, eval."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from tledge.cli_types import float_range, fraction, int_range, positive_float, positive_int
from tledge.errors import TledgeError

# Ranges of the training options: a usage error (exit 2) names the option and what is right.
SEED = int_range(0, 2**32 - 1)          # numpy's generators take 32-bit unsigned seeds
NON_NEGATIVE = float_range(0.0)
RANGES = {
    "unfreeze": positive_int, "epochs": positive_int, "steps-per-epoch": positive_int,
    "batch": int_range(2), "lr": positive_float, "backbone-lr-mult": NON_NEGATIVE,
    "weight-decay": NON_NEGATIVE, "way": int_range(2), "anchor": NON_NEGATIVE,
    "shot": positive_int, "query": positive_int, "views": positive_int,
    "val-fraction": fraction, "patience": positive_int, "seed": SEED,
    "trade-off": NON_NEGATIVE,
}


def way_or_all(text: str) -> int | str:
    """``--way``: classes per episode (at least 2), or ``all``."""
    return "all" if text == "all" else int_range(2)(text)


way_or_all.__name__ = "way"


def task_weights(text: str) -> tuple[float, ...]:
    """``--task-weights``: comma-separated finite weights >= 0, not all zero."""
    weights = tuple(NON_NEGATIVE(part.strip()) for part in text.split(","))
    if not any(weights):
        raise argparse.ArgumentTypeError("at least one task weight must be above 0")
    return weights


task_weights.__name__ = "task weights"


def _range_args(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    for name in names:
        p.add_argument(f"--{name}", type=RANGES[name], dest=name.replace("-", "_"))


def cmd_finetune(args) -> int:
    from tledge.train.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(**_config_args(FinetuneConfig, args))
    summary = finetune(args.data, args.output, config, resume=args.resume)
    print(json.dumps(summary, indent=2))
    print(f"export it with: tledge export --checkpoint {args.output} --output model.onnx")
    return 0


def cmd_split(args) -> int:
    from tledge.train.data import split_classes

    base, novel = split_classes(args.data, args.fraction, args.seed, args.output)
    print(f"{args.output / 'base'}: {len(base)} classes; {args.output / 'novel'}: {len(novel)} "
          f"classes (symbolic links)")
    return 0


def cmd_split_images(args) -> int:
    from tledge.train.data import split_images

    a, b = split_images(args.data, args.fraction, args.seed, args.output)
    print(f"{args.output / 'adapt'}: {a} images; {args.output / 'eval'}: {b} images "
          f"(symbolic links, every class split {args.fraction:.0%} / {1 - args.fraction:.0%})")
    return 0


def cmd_adapt(args) -> int:
    from tledge.train.adapt import AdaptConfig, adapt

    config = AdaptConfig(**_config_args(AdaptConfig, args))
    summary = adapt(args.source, args.target, args.output, config, args.target_eval,
                    args.cache_dir)
    print(json.dumps(summary, indent=2))
    print(f"export it with: tledge export --checkpoint {args.output} --output model.onnx")
    return 0


def _config_args(cls, args) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _episodes(args):
    from tledge.evaluate import Episodes

    way = None if args.way == "all" else args.way  # ranges: checked by the parser
    return Episodes(way, args.shot, args.query, args.episodes, args.seed)


def cmd_multitask(args) -> int:
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
    summary = multitask(spec, args.output, MultitaskConfig(**values))
    print(json.dumps(summary, indent=2))
    print(f"export it with: tledge export --checkpoint {args.output} --output model.onnx")
    return 0


def cmd_eval(args) -> int:
    from tledge import evaluate

    if args.kind == "classify":
        res = evaluate.classify(args.model[0], args.data, args.head, args.providers)
        worst = sorted(res["per_class"].items(), key=lambda kv: kv[1]["accuracy"])[:3]
        human = (f"head {res['head']!r}: accuracy {res['accuracy']:.2%} on {res['images']} "
                 f"images ({res['provider']})\nweakest classes: "
                 + ", ".join(f"{c} {v['accuracy']:.0%}" for c, v in worst))
        print(json.dumps(res) if args.json else human)
        return 0
    if args.kind == "fewshot":
        res = evaluate.fewshot(args.model[0], args.data, _episodes(args), args.unknown,
                               args.far, args.providers)
        human = (f"{res['way']}-way {res['shot']}-shot, {res['episodes']} episodes: accuracy "
                 f"{res['accuracy']:.2%} ± {res['ci95']:.2%} (95% CI)")
        if "auroc" in res:
            human += (f"\nopen-set: AUROC {res['auroc']:.3f}; "
                      f"threshold {res['threshold_at_far']:.3f}"
                      f" accepts {res['far']:.0%} of unknowns and "
                      f"{res['known_accepted_at_threshold']:.0%} of correct known answers")
    else:
        if len(args.model) != 2:
            raise TledgeError("eval compare needs exactly two --model options (A then B)")
        res = evaluate.compare(args.model[0], args.model[1], args.data, _episodes(args),
                               args.providers)
        human = (f"{res['way']}-way {res['shot']}-shot, {res['episodes']} paired episodes\n"
                 f"A {res['a']['model']}: {res['a']['accuracy']:.2%} ± {res['a']['ci95']:.2%}\n"
                 f"B {res['b']['model']}: {res['b']['accuracy']:.2%} ± {res['b']['ci95']:.2%}\n"
                 f"B - A: {res['difference']:+.2%} ± {res['difference_ci95']:.2%} (95% CI)")
    print(json.dumps(res) if args.json else human)
    return 0


def add_parsers(sub, model_args) -> None:
    p = sub.add_parser("finetune", help="fine-tune a backbone on DATA/<class>/*.jpg")
    p.add_argument("data", type=Path)
    p.add_argument("--output", "-o", type=Path, required=True, help="run directory")
    p.add_argument("--backbone")
    p.add_argument("--mode", choices=("head", "partial", "full"))
    p.add_argument("--unfreeze", type=positive_int,
                   help="partial: how many final stages to train")
    p.add_argument("--objective", choices=("ce", "proto", "supcon", "cosface"))
    _range_args(p, ("epochs", "steps-per-epoch", "lr", "backbone-lr-mult", "weight-decay",
                    "way", "anchor", "shot", "query", "views", "val-fraction", "patience",
                    "seed"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--weights", help="start from this state dict instead of the published one")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("split-classes", help="split a dataset's classes into base and novel")
    p.add_argument("data", type=Path)
    p.add_argument("--output", "-o", type=Path, required=True)
    p.add_argument("--fraction", type=fraction, default=0.67,
                   help="share of classes in base, in (0, 1)")
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("split-images", help="split every class's images in two (adapt / eval)")
    p.add_argument("data", type=Path)
    p.add_argument("--output", "-o", type=Path, required=True)
    p.add_argument("--fraction", type=fraction, default=0.5,
                   help="share of images in adapt/, in (0, 1)")
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(func=cmd_split_images)

    p = sub.add_parser("adapt", help="adapt a model from labelled source to unlabelled target "
                                     "images (domain adaptation)")
    p.add_argument("--source", type=Path, required=True, help="labelled: SOURCE/<class>/*.jpg")
    p.add_argument("--target", type=Path, required=True,
                   help="target-domain images (any layout; labels, if any, are ignored)")
    p.add_argument("--target-eval", type=Path,
                   help="labelled target images, only to report accuracy (never trained on)")
    p.add_argument("--output", "-o", type=Path, required=True, help="run directory")
    p.add_argument("--method", help="none, dann, coral, mcc or adabn")
    p.add_argument("--cache-dir", type=Path,
                   help="keep the frozen trunk's features here and reuse them across runs")
    p.add_argument("--backbone")
    p.add_argument("--select", choices=("last", "source", "im"),
                   help="checkpoint kept, chosen without target labels: last (default), "
                        "source (held-out source accuracy) or im (information maximisation)")
    _range_args(p, ("unfreeze", "epochs", "steps-per-epoch", "batch", "lr", "backbone-lr-mult",
                    "weight-decay", "trade-off", "views", "val-fraction", "seed"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--weights", help="start from this state dict instead of the published one")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("eval", help="evaluate exported models (few-shot, paired comparison, "
                                    "classification heads)")
    p.add_argument("kind", choices=("fewshot", "compare", "classify"))
    p.add_argument("data", type=Path, help="DATA/<class>/*.jpg")
    p.add_argument("--model", "-m", type=Path, action="append", required=True,
                   help="exported model (give two for compare: A then B)")
    p.add_argument("--providers", default="auto")
    p.add_argument("--way", type=way_or_all, default=5,
                   help="classes per episode (at least 2), or 'all'")
    p.add_argument("--shot", type=positive_int, default=1)
    p.add_argument("--query", type=positive_int, default=5)
    p.add_argument("--episodes", type=positive_int, default=300)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--unknown", type=Path, help="images of no class, for open-set figures")
    p.add_argument("--far", type=fraction, default=0.05,
                   help="false-accept rate for the threshold, in (0, 1)")
    p.add_argument("--head", help="classify: which head (default: the first)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("multitask", help="train one backbone with a head per task")
    p.add_argument("spec", type=Path, nargs="?",
                   help="CSV: image,task1,task2,... (paths relative to the CSV)")
    p.add_argument("--tree", type=Path, help="instead of a CSV: ROOT/<level1>/<level2>/*.jpg")
    p.add_argument("--levels", help="with --tree: task names of the folder levels, e.g. "
                                    "domain,class")
    p.add_argument("--output", "-o", type=Path, required=True, help="run directory")
    p.add_argument("--backbone")
    p.add_argument("--weighting", choices=("fixed", "uncertainty"))
    p.add_argument("--task-weights", type=task_weights,
                   help="fixed weighting: comma-separated weights >= 0, one per task")
    _range_args(p, ("unfreeze", "epochs", "steps-per-epoch", "batch", "lr", "backbone-lr-mult",
                    "weight-decay", "views", "val-fraction", "seed"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=cmd_multitask)
