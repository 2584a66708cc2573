"""Class labels are data shown to people: one canonical, visible form per name.

A label is NFC-normalised text without control, format (zero-width, bidi override), line or
paragraph separator, private-use or unpaired surrogate characters, without default-ignorable
code points (variation selectors, Hangul fillers, the combining grapheme joiner...) or blank
glyphs, with U+0020 as its only space, and with at least one letter, digit, symbol or
punctuation mark: two classes can never look alike on screen yet differ in bytes by an
invisible character, and a label never reorders the text around it.

Letters that merely resemble others across scripts (Cyrillic 'а' beside Latin 'a', full-width
'Ａ') stay allowed: they are ordinary text in legitimate multilingual labels, and telling a
deliberate look-alike from a real name is not something a character rule can do.
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
# Unicode's Default_Ignorable_Code_Point ranges (renderers draw nothing for them) not already
# refused by category, plus U+2800 BRAILLE PATTERN BLANK (a blank glyph): inclusive ranges.
_INVISIBLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
              (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
              (0x2060, 0x206F), (0x2800, 0x2800), (0x3164, 0x3164), (0xFE00, 0xFE0F),
              (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
              (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
# A label must show something: a letter, number, symbol or punctuation mark (not only
# combining marks or spaces).
_VISIBLE = ("L", "N", "S", "P")


def validate_label(label: str) -> str:
    """Return ``label`` in NFC, or raise GalleryError saying what is wrong with it.

    Refused: non-text, empty or blank, leading/trailing spaces, more than MAX_LABEL_LEN
    characters, any character ``_refusal`` names (the error gives its code point), and text
    without a letter, number, symbol or punctuation character.
    """
    if not isinstance(label, str) or not label.strip():
        raise GalleryError("a label must be a non-empty text")
    for i, ch in enumerate(label):
        reason = _refusal(ch)
        if reason:
            what, fix = reason
            raise GalleryError(f"label {_show(label)} contains {what} (U+{ord(ch):04X}) at "
                               f"position {i}; {fix}")
    label = unicodedata.normalize("NFC", label)
    if label != label.strip():
        raise GalleryError(f"label {label!r} has leading or trailing spaces; remove them")
    if len(label) > MAX_LABEL_LEN:
        raise GalleryError(f"label is {len(label)} characters long; the limit is {MAX_LABEL_LEN}")
    if not any(unicodedata.category(c)[0] in _VISIBLE for c in label):
        raise GalleryError(f"label {_show(label)} has no letter, digit, symbol or punctuation "
                           "mark (only combining marks or spaces); labels must be visible text")
    return label


def _refusal(ch: str) -> tuple[str, str] | None:
    """``(what ch is, how to fix it)`` when ``ch`` may not appear in a label, else None."""
    visible = "labels must be visible text"
    kind = _REFUSED.get(unicodedata.category(ch))
    if kind:
        return kind, visible
    code = ord(ch)
    if any(low <= code <= high for low, high in _INVISIBLE):
        return "an invisible (default-ignorable or blank) character", visible
    if unicodedata.category(ch) == "Zs" and ch != " ":
        return "a space other than the ordinary one", "use an ordinary space"
    return None


def _show(label: str) -> str:
    """The label with every refused character escaped, safe to print anywhere."""
    return "'" + "".join(f"\\u{ord(c):04x}" if _refusal(c) else c
                         for c in label[:MAX_LABEL_LEN]) + "'"
