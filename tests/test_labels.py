"""Labels are shown to people: one visible, canonical form (issue 12, item 11)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tledge.errors import GalleryError
from tledge.runtime.labels import MAX_LABEL_LEN, validate_label

LOOKALIKES = {
    "right-to-left override": "cup\u202eputer",
    "zero-width space": "c\u200bup",
    "zero-width joiner": "cu\u200dp",
    "byte-order mark": "\ufeffcup",
    "line separator": "cup\u2028mug",
    "paragraph separator": "cup\u2029",
    "lone surrogate": "cup\udc80",
    "isolate": "\u2067cup\u2069",
    "control": "cup\x07",
    "newline": "cup\nmug",
    "private use": "cup\ue000",
}


@pytest.mark.parametrize("label", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_invisible_and_bidi_characters_are_refused_with_the_code_point(label):
    with pytest.raises(GalleryError, match=r"U\+[0-9A-F]{4}"):
        validate_label(label)


def test_labels_are_stored_in_nfc():
    decomposed = "cafe\u0301"                       # e + combining acute
    assert validate_label(decomposed) == "caf\u00e9"
    assert validate_label("caf\u00e9") == validate_label(decomposed)


@pytest.mark.parametrize("label", ["", "   ", " cup", "cup ", "x" * (MAX_LABEL_LEN + 1), None, 3])
def test_empty_padded_long_or_non_text_labels_are_refused(label):
    with pytest.raises(GalleryError):
        validate_label(label)


@pytest.mark.parametrize("label", ["blue mug", "Kaffeetasse", "чашка", "杯子", "فنجان",
                                   "a/b", "it's \"quoted\"", "🍵 tea", "x" * MAX_LABEL_LEN])
def test_ordinary_labels_in_any_script_pass_unchanged(label):
    assert validate_label(label) == label


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=60))
def test_any_text_is_either_refused_cleanly_or_returned_visible_and_canonical(text):
    try:
        out = validate_label(text)
    except GalleryError as exc:
        assert str(exc)
        str(exc).encode("utf-8")                   # the message itself is printable
        return
    assert out == unicodedata.normalize("NFC", out) == out.strip()
    assert 0 < len(out) <= MAX_LABEL_LEN
    assert all(unicodedata.category(c) not in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
               for c in out)
    assert validate_label(out) == out              # idempotent
