"""The kiosk's settings, range-checked for library callers as the CLI checks them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tledge.errors import TledgeError
from tledge.runtime.recognizer import Roi


@dataclass(frozen=True)
class KioskConfig:
    model: Path
    gallery: Path
    source: str
    stable_frames: int = 5          # a label is reported after this many frames in a row
    threshold: float | None = None  # None: the gallery's own
    smoothing: int = 1
    roi: Roi | None = None
    max_frames: int | None = None
    exit_after: float | None = None  # seconds
    loop: bool = False               # restart video files and folders at their end
    every_frame: bool = False        # also publish a "frame" event for every frame
    retry_initial: float = 0.5       # seconds before the first reconnection attempt
    retry_max: float = 30.0
    stale_after: float = 10.0        # health fails when no frame came for this long
    providers: str = "auto"
    threads: int | None = None
    enroll_queue: int = 4            # enrollments that may wait for the worker

    def validate(self) -> None:
        """Range-check every number (library callers get the CLI's checks too)."""
        _at_least("--stable", self.stable_frames, 1, optional=False)
        _at_least("--smoothing", self.smoothing, 1, optional=False)
        _at_least("enroll_queue", self.enroll_queue, 1, optional=False)
        _at_least("--max-frames", self.max_frames, 1)
        _at_least("--threads", self.threads, 1)
        if self.threshold is not None and not (_finite(self.threshold)
                                               and -1.0 <= self.threshold <= 1.0):
            raise TledgeError(f"--threshold must be a cosine in [-1, 1], got {self.threshold}")
        for name, value in (("--exit-after", self.exit_after), ("--retry-max", self.retry_max),
                            ("--stale-after", self.stale_after),
                            ("retry_initial", self.retry_initial)):
            if value is not None and not (_finite(value) and value > 0):
                raise TledgeError(f"{name} must be a positive number of seconds, got {value}")
        if self.retry_initial > self.retry_max:
            raise TledgeError(f"--retry-max ({self.retry_max} s) must be at least the first "
                              f"retry delay ({self.retry_initial} s)")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[2:]) < 8):
            raise TledgeError(f"--roi X Y W H must have a width and height of at least 8 pixels, "
                              f"got {self.roi}")


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(name: str, value, low: int, optional: bool = True) -> None:
    """An integer >= low (0 frames must not mean unlimited); None passes when optional."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise TledgeError(f"{name} must be an integer of at least {low}, got {value!r}")
