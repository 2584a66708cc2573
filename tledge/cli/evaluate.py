"""``tledge eval KIND``: evaluate exported models (few-shot, paired comparison, heads).

Adding a kind is one ``_add_<kind>(kinds, model_args)`` function listed in ``KINDS``: it adds
its parser with ``kinds.add_parser`` and sets ``func`` to its command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tledge.cli.frontier import add_frontier
from tledge.cli.types import SEED, examples, fraction, positive_int, way_or_all
from tledge.errors import TledgeError

DATA_HELP = "labelled images: DATA/<class>/*.jpg"
PROVIDERS_HELP = "ONNX Runtime providers: auto (CUDA when available, else CPU), cpu or cuda"


def _episodes(args: argparse.Namespace):
    from tledge.evaluate import Episodes

    way = None if args.way == "all" else args.way  # ranges: checked by the parser
    return Episodes(way, args.shot, args.query, args.episodes, args.seed)


def _print(args: argparse.Namespace, res: dict, human: str) -> int:
    print(json.dumps(res) if args.json else human)
    return 0


def cmd_fewshot(args: argparse.Namespace) -> int:
    from tledge import evaluate

    res = evaluate.fewshot(args.model[0], args.data, _episodes(args), args.unknown, args.far,
                           args.providers)
    human = (f"{res['way']}-way {res['shot']}-shot, {res['episodes']} episodes: accuracy "
             f"{res['accuracy']:.2%} ± {res['ci95']:.2%} (95% CI)")
    if "auroc" in res:
        human += (f"\nopen-set: AUROC {res['auroc']:.3f}; threshold "
                  f"{res['threshold_at_far']:.3f} accepts {res['far']:.0%} of unknowns and "
                  f"{res['known_accepted_at_threshold']:.0%} of correct known answers")
    return _print(args, res, human)


def cmd_compare(args: argparse.Namespace) -> int:
    from tledge import evaluate

    if len(args.model) != 2:
        raise TledgeError("eval compare needs exactly two --model options (A then B)")
    res = evaluate.compare(args.model[0], args.model[1], args.data, _episodes(args),
                           args.providers)
    a, b = res["a"], res["b"]
    human = (f"{res['way']}-way {res['shot']}-shot, {res['episodes']} paired episodes\n"
             f"A {a['model']}: {a['accuracy']:.2%} ± {a['ci95']:.2%}\n"
             f"B {b['model']}: {b['accuracy']:.2%} ± {b['ci95']:.2%}\n"
             f"B - A: {res['difference']:+.2%} ± {res['difference_ci95']:.2%} (95% CI)")
    return _print(args, res, human)


def cmd_classify(args: argparse.Namespace) -> int:
    from tledge import evaluate

    res = evaluate.classify(args.model[0], args.data, args.head, args.providers)
    worst = sorted(res["per_class"].items(), key=lambda kv: kv[1]["accuracy"])[:3]
    human = (f"head {res['head']!r}: accuracy {res['accuracy']:.2%} on {res['images']} "
             f"images ({res['provider']})\nweakest classes: "
             + ", ".join(f"{c} {v['accuracy']:.0%}" for c, v in worst))
    return _print(args, res, human)


def _kind(kinds, name: str, help_: str, func, *example: str, models: str = "exported model"
          ) -> argparse.ArgumentParser:
    """A kind's parser with what every kind takes: DATA, --model, --providers, --json."""
    text = help_.replace("%%", "%")  # help is %-formatted by argparse, a description not
    a = kinds.add_parser(name, help=help_, description=text[0].upper() + text[1:] + ".",
                         epilog=examples(*example))
    a.add_argument("data", type=Path, help=DATA_HELP)
    a.add_argument("--model", "-m", type=Path, action="append", required=True, help=models)
    a.add_argument("--providers", default="auto", help=PROVIDERS_HELP)
    a.add_argument("--json", action="store_true",
                   help="print one JSON object (without it: a readable summary)")
    a.set_defaults(func=func)
    return a


def _episode_args(a: argparse.ArgumentParser) -> None:
    a.add_argument("--way", type=way_or_all, default=5,
                   help="classes per episode (at least 2), or 'all'")
    a.add_argument("--shot", type=positive_int, default=1, help="support images per class")
    a.add_argument("--query", type=positive_int, default=5, help="query images per class")
    a.add_argument("--episodes", type=positive_int, default=300, help="episodes to average")
    a.add_argument("--seed", type=SEED, default=0, help="random seed of the episodes")


def _add_fewshot(kinds, model_args) -> None:
    a = _kind(kinds, "fewshot", "few-shot accuracy over random episodes, with a 95%% CI",
              cmd_fewshot, "tledge eval fewshot split/novel -m models/m.onnx --way 5 --shot 1",
              "tledge eval fewshot split/novel -m models/m.onnx --unknown photos/other")
    _episode_args(a)
    a.add_argument("--unknown", type=Path,
                   help="images of no class, for open-set figures (default: closed-set only)")
    a.add_argument("--far", type=fraction, default=0.05,
                   help="open-set: false-accept rate for the threshold, in (0, 1)")


def _add_compare(kinds, model_args) -> None:
    a = _kind(kinds, "compare", "two models on the same episodes: the paired difference",
              cmd_compare, "tledge eval compare split/novel -m models/a.onnx -m models/b.onnx",
              models="exported model; give two: A then B")
    _episode_args(a)


def _add_classify(kinds, model_args) -> None:
    a = _kind(kinds, "classify", "accuracy of a model's classification head",
              cmd_classify, "tledge eval classify data/ -m models/mt.onnx --head class")
    a.add_argument("--head", help="which head (default: the model's first)")


KINDS = [_add_fewshot, _add_compare, _add_classify]
KINDS.append(add_frontier)


def add_parser(sub, model_args) -> None:
    p = sub.add_parser(
        "eval", help="evaluate exported models (few-shot, paired comparison, "
                     "classification heads, accuracy-vs-latency frontier)",
        description="Evaluate exported models; see `tledge eval KIND -h`.",
        epilog=examples("tledge eval fewshot split/novel -m models/m.onnx",
                        "tledge eval compare split/novel -m a.onnx -m b.onnx"))
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for add in KINDS:
        add(kinds, model_args)
