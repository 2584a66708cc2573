"""Errors a user can act on. The CLI prints their message on one line and exits 1."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TledgeError(Exception):
    """Base class: the message says what was wrong and what would be right."""


class ArtifactError(TledgeError):
    """A model file is missing, unreadable or lacks valid ``tledge.*`` metadata."""


class ImageError(TledgeError):
    """An image could not be read; the message names the file."""


class GalleryError(TledgeError):
    """A gallery is missing, damaged, or does not match the model."""


class ProviderError(TledgeError):
    """An ONNX Runtime execution provider that was asked for cannot run."""


class SourceError(TledgeError):
    """A frame source (camera, video, folder) cannot be opened or was lost."""


class WeightsError(TledgeError):
    """Pretrained weights cannot be found offline, or their hash does not match."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for a misspelled name, or a list of valid names."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        return f" Did you mean {close[0]!r}?"
    return f" Choose one of: {', '.join(choices)}."
