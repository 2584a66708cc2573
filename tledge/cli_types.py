"""argparse pieces shared by every tledge command line (``tledge``, its kiosk and fleet
commands, ``tledge-gui``): types that range-check numbers with a message that says what
would be right (each raises ``argparse.ArgumentTypeError``: a usage error, exit 2), and the
help formatter that shows defaults and examples.

Kept outside ``tledge.cli``: the kiosk, the fleet and the GUI sit below the CLI in the
import layers, and must not import it."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

# Upper bounds: a count nobody means (``--episodes 99999999999999999999``) must be a usage
# error, not an hour of work, an OverflowError or 100 000 threads.
MAX_COUNT = 10**6         # episodes, epochs, steps, images, repeats, every Nth frame...
MAX_THREADS = 256         # ONNX Runtime threads (each costs a stack)
MAX_SMOOTHING = 1000      # frames averaged by the recognizer
MAX_STABLE = 10_000       # frames a kiosk label must hold
MAX_FRAMES = 10**12       # frames a run may process (years of video)
_SHOWN = 40               # characters of a refused argument echoed back


def _number(text: str, kind: type) -> float:
    shown = repr(text[:_SHOWN] + ("..." if len(text) > _SHOWN else ""))
    try:
        value = kind(text)
    except ValueError:  # includes ints beyond Python's digit limit
        raise argparse.ArgumentTypeError(
            f"{shown} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{shown} is not a finite number")
    return value


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (no upper bound when high is None)."""
    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bound}")
        return value
    parse.__name__ = "integer"
    return parse


def float_range(low: float, high: float | None = None, low_open: bool = False,
                high_open: bool = False) -> Callable[[str], float]:
    """A finite float in the interval [low, high] (open ends when asked)."""
    def parse(text: str) -> float:
        value = float(_number(text, float))
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            span = f"{left}{low:g}, {high:g}{right}" if high is not None else (
                f"{'>' if low_open else '>='} {low:g}")
            raise argparse.ArgumentTypeError(
                f"{value:g} is out of range: must be {'in ' if high is not None else ''}{span}")
        return value
    parse.__name__ = "number"
    return parse


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a default worth showing
    (not None, False, empty or hidden: those options' help says what happens without
    them) and the help does not already state it; keeps the epilog's examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "(default" in text or default is None or default is False
                or default is argparse.SUPPRESS or default in ((), [])):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:  # laid out by hand (the examples): keep it as written
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def examples(*commands: str) -> str:
    """An epilog listing example command lines."""
    return "examples:\n" + "\n".join(f"  {c}" for c in commands)


positive_int = int_range(1, MAX_COUNT)
threads = int_range(1, MAX_THREADS)
smoothing = int_range(1, MAX_SMOOTHING)
stable_frames = int_range(1, MAX_STABLE)
frame_count = int_range(1, MAX_FRAMES)
cosine = float_range(-1.0, 1.0)                              # a similarity threshold
fraction = float_range(0.0, 1.0, low_open=True, high_open=True)   # a split share
probability = float_range(0.0, 1.0)
positive_float = float_range(0.0, low_open=True)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``HelpFormatter`` by default; the sub-parsers of its
    ``add_subparsers()`` are of this class too, so every command shows its defaults."""

    def __init__(self, *args, formatter_class: type = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
