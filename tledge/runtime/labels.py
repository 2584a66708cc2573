"""Class labels are data shown to people: one canonical, visible form per name.

A label is NFC-normalised text without control, format (zero-width, bidi override), line or
paragraph separator, private-use or unpaired surrogate characters, so two classes can never
look alike on screen yet differ in bytes, and a label never reorders the text around it.
"""

from __future__ import annotations

import unicodedata

from tledge.errors import GalleryError

MAX_LABEL_LEN = 200
# Cc control, Cf format (ZWSP, ZWJ, RLO, LRI, BOM...), Cs surrogates, Co private use,
# Cn unassigned, Zl/Zp line and paragraph separators.
_REFUSED = {"Cc": "a control character", "Cf": "an invisible formatting character",
            "Cs": "an unpaired surrogate", "Co": "a private-use character",
            "Cn": "an unassigned code point", "Zl": "a line separator",
            "Zp": "a paragraph separator"}


def validate_label(label: str) -> str:
    """Return ``label`` in NFC, or raise GalleryError saying what is wrong with it.

    Refused: non-text, empty or blank, leading/trailing spaces, more than MAX_LABEL_LEN
    characters, and any character of the categories in ``_REFUSED`` (named in the error).
    """
    if not isinstance(label, str) or not label.strip():
        raise GalleryError("a label must be a non-empty text")
    for i, ch in enumerate(label):
        kind = _REFUSED.get(unicodedata.category(ch))
        if kind:
            raise GalleryError(f"label {_show(label)} contains {kind} (U+{ord(ch):04X}) at "
                               f"position {i}; labels must be visible text")
    label = unicodedata.normalize("NFC", label)
    if label != label.strip():
        raise GalleryError(f"label {label!r} has leading or trailing spaces; remove them")
    if len(label) > MAX_LABEL_LEN:
        raise GalleryError(f"label is {len(label)} characters long; the limit is {MAX_LABEL_LEN}")
    return label


def _show(label: str) -> str:
    """The label with every refused character escaped, safe to print anywhere."""
    return "'" + "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in _REFUSED else c
                         for c in label[:MAX_LABEL_LEN]) + "'"
