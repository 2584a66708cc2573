"""Turn a noisy per-frame stream of labels into stable, reportable changes."""

from __future__ import annotations

from dataclasses import dataclass, field

UNKNOWN = None  # the label of an unknown frame


@dataclass
class Stable:
    """A label (None: unknown) seen on ``frames`` consecutive frames, with their mean score
    and mean latency."""

    label: str | None
    score: float
    frames: int
    latency_ms: float


@dataclass
class Debouncer:
    """Report a label only once it has been the per-frame answer ``stable_frames`` times in a
    row and differs from the last reported one.

    ``push`` returns the new stable state when one is reached, else None. A one-frame flicker
    therefore never reaches the event stream, and a label that stays is reported once.
    """

    stable_frames: int = 5
    _label: str | None = field(default=UNKNOWN, init=False)
    _run: int = field(default=0, init=False)
    _scores: list[float] = field(default_factory=list, init=False)
    _latencies: list[float] = field(default_factory=list, init=False)
    reported: Stable | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.stable_frames < 1:
            raise ValueError(f"stable_frames must be at least 1, got {self.stable_frames}")

    def push(self, label: str | None, score: float, latency_ms: float) -> Stable | None:
        if self._run and label == self._label:
            self._run += 1
        else:
            self._label, self._run = label, 1
            self._scores, self._latencies = [], []
        self._scores.append(score)
        self._latencies.append(latency_ms)
        self._scores = self._scores[-self.stable_frames:]
        self._latencies = self._latencies[-self.stable_frames:]
        if self._run < self.stable_frames:
            return None
        if self.reported is not None and self.reported.label == label:
            return None
        self.reported = Stable(label, sum(self._scores) / len(self._scores), self._run,
                               sum(self._latencies) / len(self._latencies))
        return self.reported

    def reset(self) -> None:
        """Forget the current run and the last report (e.g. after the camera came back)."""
        self._run, self._scores, self._latencies, self.reported = 0, [], [], None
