"""A small real image set shipped with tledge for the demo, tests and parity checks.

Caltech-101 images (CC BY 4.0; see ATTRIBUTION.md): ten classes with three enrollment
shots and three held-back queries each, plus images of no enrolled class ("unknown").
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parent


def sample_root() -> Path:
    return _ROOT


def enroll_dir() -> Path:
    """Class-per-folder enrollment shots."""
    return _ROOT / "enroll"


def query_dir() -> Path:
    """Held-back images of the enrolled classes, class-per-folder."""
    return _ROOT / "query"


def unknown_dir() -> Path:
    """Images of classes that are not enrolled (two other objects and clutter)."""
    return _ROOT / "unknown"
