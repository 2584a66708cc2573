"""Frame -> (label or unknown, score), optionally smoothed over consecutive frames."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from tledge.errors import TledgeError
from tledge.runtime.embedder import Embedder, l2_normalize
from tledge.runtime.gallery import MODES, Gallery
from tledge.runtime.images import check_rgb

Roi = tuple[int, int, int, int]  # x, y, width, height in pixels


@dataclass(frozen=True)
class Recognition:
    """``label`` is None for unknown; ``candidate`` is the closest class regardless."""

    label: str | None
    score: float
    candidate: str | None
    latency_ms: float

    def to_dict(self) -> dict:
        """JSON-ready fields: ``label`` (None when unknown), ``known``, ``score``, ``candidate``
        (the closest class even when unknown) and ``latency_ms``."""
        return {"label": self.label, "known": self.label is not None,
                "score": round(self.score, 4), "candidate": self.candidate,
                "latency_ms": round(self.latency_ms, 2)}


class Recognizer:
    """Embeds a frame (or its region of interest) and matches it against the gallery.

    ``smoothing`` > 1 averages the embeddings of the last N frames before matching, which
    steadies a live label at the cost of N-1 frames of lag. ``threshold`` None uses the
    gallery's own (a cosine in [-1, 1]). ``mode`` is "prototype" (closest class mean) or
    "nearest" (closest enrolled sample); None follows the gallery's ``mode`` at each frame.
    ``fast_resize`` uses the cheaper live-frame resampling (embeddings within a cosine of
    ~1e-4 of the exact ones; see ``preprocess_one``).
    """

    def __init__(self, embedder: Embedder, gallery: Gallery, smoothing: int = 1,
                 threshold: float | None = None, fast_resize: bool = True,
                 mode: str | None = None) -> None:
        if isinstance(smoothing, bool) or not isinstance(smoothing, Integral) \
                or not 1 <= smoothing <= 1000:
            raise TledgeError(f"smoothing must be a whole number of frames from 1 to 1000, "
                              f"got {smoothing!r}")
        if mode is not None and mode not in MODES:
            raise TledgeError(f"unknown matching mode {mode!r}; choose one of {MODES}")
        self.embedder, self.gallery, self.mode = embedder, gallery, mode
        self.threshold = threshold
        self.fast_resize = fast_resize
        self._recent: deque[np.ndarray] = deque(maxlen=smoothing)

    @property
    def threshold(self) -> float | None:
        """The open-set threshold; None: the gallery's own."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        # NaN would compare False with every score: everything "unknown", silently.
        if value is not None and not (math.isfinite(value) and -1.0 <= value <= 1.0):
            raise TledgeError(f"threshold {value!r} must be a cosine similarity in [-1, 1]")
        self._threshold = None if value is None else float(value)

    def reset(self) -> None:
        """Forget the smoothing history (e.g. after the scene or the gallery changed)."""
        self._recent.clear()

    def recognize(self, image: np.ndarray, roi: Roi | None = None) -> Recognition:
        """Recognise one RGB uint8 frame (H, W, 3)."""
        start = time.perf_counter()
        image = crop_roi(check_rgb(image, "frame"), roi)
        # The gallery says whether queries get the same views as its shots (augment_queries).
        views = self.gallery.augment if self.gallery.augment_queries else "none"
        vector = self.embedder.embed([image], fast_resize=self.fast_resize, augment=views)[0]
        self._recent.append(vector)
        if len(self._recent) > 1:
            vector = l2_normalize(np.mean(self._recent, axis=0))
        mode = self.mode or self.gallery.mode
        candidate, score = self.gallery.best_matches(vector[None, :], mode)[0]
        thr = self.gallery.threshold if self.threshold is None else self.threshold
        label = candidate if candidate is not None and score >= thr else None
        return Recognition(label, score, candidate, (time.perf_counter() - start) * 1000.0)


def crop_roi(image: np.ndarray, roi: Roi | None) -> np.ndarray:
    """The ``roi`` part of ``image``, clipped to its bounds; the whole image when None."""
    if roi is None:
        return image
    x, y, w, h = (int(v) for v in roi)
    height, width = image.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise TledgeError(f"region of interest {roi} is outside the {width}x{height} frame "
                          "or smaller than 8 pixels")
    return image[y0:y1, x0:x1]
