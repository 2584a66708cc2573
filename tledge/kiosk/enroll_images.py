"""Images of a ``POST /enroll`` request: checked cheaply in the handler, decoded one at a
time in the enrollment worker.

The handler only checks that ``images`` is a list of at most ``max_images`` base64 texts;
nothing is decoded there. The worker screens each image (decode, keep the reason if it
fails, drop the pixels) and hands the gallery a lazy sequence that decodes an image when
the gallery asks for it, so at most one decoded request image is alive at a time.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence

import numpy as np

from tledge.errors import ImageError, TledgeError
from tledge.runtime.images import decode_image

_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class RequestError(TledgeError):
    """A request the client must change: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_images(images: object, max_images: int) -> list[str]:
    """``images`` as a list of 1..max_images base64 texts, or RequestError (400/413)."""
    if not isinstance(images, list) or not images:
        raise RequestError(400, '"images" must be a non-empty list of base64-encoded images')
    if len(images) > max_images:
        raise RequestError(413, f"{len(images)} images in one request; the limit is "
                                f"{max_images}: send them in several requests")
    for i, item in enumerate(images):
        if not isinstance(item, str) or len(item) % 4 or not _BASE64.fullmatch(item):
            raise RequestError(400, f"images[{i}] is not base64 text (A-Z a-z 0-9 + / with "
                                    "= padding, no line breaks)")
    return images


def _decode(text: str, index: int) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"images[{index}]: not base64 ({exc})") from exc
    return decode_image(data, f"images[{index}]")


def screen(images: list[str], cancelled: Callable[[], bool]) -> tuple[list[int], list[dict]]:
    """Indices of the images that decode, and ``{"image", "error"}`` for those that do not.

    Each image is decoded and released before the next (bounded memory); the gallery
    decodes the good ones again, one at a time, through ``LazyImages``.
    """
    good, failed = [], []
    for i, text in enumerate(images):
        if cancelled():
            raise TledgeError("the kiosk is stopping; the enrollment was not stored")
        try:
            _decode(text, i)
            good.append(i)
        except ImageError as exc:
            failed.append({"image": f"images[{i}]", "error": str(exc)})
    return good, failed


class LazyImages(Sequence):
    """The screened images of a request, decoded (RGB uint8, H x W x 3) on access."""

    def __init__(self, images: list[str], indices: list[int],
                 cancelled: Callable[[], bool]) -> None:
        self._images, self._indices, self._cancelled = images, indices, cancelled

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        if self._cancelled():  # stop between images: nothing was stored yet
            raise TledgeError("the kiosk is stopping; the enrollment was not stored")
        index = self._indices[position]
        return _decode(self._images[index], index)
