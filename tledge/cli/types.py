"""argparse types of the ``tledge`` commands: the shared range-checked numbers
(``tledge.cli_types``, also used by the kiosk, the fleet and the GUI) and those only the
CLI's own commands take. Each raises ``argparse.ArgumentTypeError`` (a usage error, exit 2)."""

from __future__ import annotations

import argparse

from tledge.cli_types import (
    MAX_COUNT,
    ArgumentParser,
    HelpFormatter,
    cosine,
    examples,
    float_range,
    fraction,
    frame_count,
    int_range,
    positive_float,
    positive_int,
    probability,
    smoothing,
    stable_frames,
    threads,
)

__all__ = ["AT_LEAST_TWO", "ArgumentParser", "HelpFormatter", "cosine", "examples",
           "float_range", "fraction",
           "int_range", "positive_float", "positive_int", "probability", "NON_NEGATIVE",
           "NON_NEGATIVE_INT", "SEED", "frame_count", "gallery_sizes", "smoothing",
           "stable_frames", "task_weights", "threads", "way_or_all"]

SEED = int_range(0, 2**32 - 1)          # numpy's generators take 32-bit unsigned seeds
NON_NEGATIVE = float_range(0.0)
NON_NEGATIVE_INT = int_range(0, MAX_COUNT)
AT_LEAST_TWO = int_range(2, MAX_COUNT)  # classes per batch or episode, images per step
MAX_GALLERY_SIZE = 10_000_000   # synthetic vectors held in memory: ~20 GB at 512-d


def way_or_all(text: str) -> int | str:
    """``--way``: classes per episode (at least 2), or ``all``."""
    return "all" if text == "all" else AT_LEAST_TWO(text)


way_or_all.__name__ = "way"


def task_weights(text: str) -> tuple[float, ...]:
    """``--task-weights``: comma-separated finite weights >= 0, not all zero."""
    weights = tuple(NON_NEGATIVE(part.strip()) for part in text.split(","))
    if not any(weights):
        raise argparse.ArgumentTypeError("at least one task weight must be above 0")
    return weights


task_weights.__name__ = "task weights"


def gallery_sizes(text: str) -> str:
    """``--sizes``: comma-separated gallery sizes (1e5 style allowed), each >= 1.

    Returned as plain comma-separated integers, the form ``tledge.bench`` reads."""
    sizes = []
    for part in (s.strip() for s in text.split(",") if s.strip()):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a number") from None
        if not (value.is_integer() and 1 <= value <= MAX_GALLERY_SIZE):
            raise argparse.ArgumentTypeError(
                f"{part} is out of range: each size must be a whole number between 1 and "
                f"{MAX_GALLERY_SIZE:,}")
        sizes.append(int(value))
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size, e.g. 1000,10000")
    return ",".join(str(size) for size in sizes)


gallery_sizes.__name__ = "sizes"
