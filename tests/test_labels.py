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
    # Issue 12 attack D2: default-ignorable and blank characters that are not category Cf.
    "combining grapheme joiner": "cu\u034fp",
    "variation selector": "cup\ufe0f",
    "variation selector supplement": "cup\U000e0100",
    "hangul choseong filler": "cup\u115f",
    "hangul jungseong filler": "\u1160cup",
    "hangul filler": "cup\u3164",
    "halfwidth hangul filler": "cup\uffa0",
    "braille blank": "cup\u2800",
    "mongolian free variation selector": "cup\u180b",
    "khmer inherent vowel": "cu\u17b4p",
    "khmer inherent vowel aa": "cup\u17b5",
    "hangul filler alone": "\u3164",
}
ODD_SPACES = {"no-break space": "blue\u00a0mug", "ideographic space": "blue\u3000mug",
              "en space": "blue\u2002mug", "ogham space mark": "blue\u1680mug",
              "medium mathematical space": "blue\u205fmug"}


@pytest.mark.parametrize("label", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_invisible_and_bidi_characters_are_refused_with_the_code_point(label):
    with pytest.raises(GalleryError, match=r"U\+[0-9A-F]{4}"):
        validate_label(label)


@pytest.mark.parametrize("label", ODD_SPACES.values(), ids=ODD_SPACES.keys())
def test_spaces_other_than_the_ordinary_one_are_refused(label):
    with pytest.raises(GalleryError, match=r"U\+[0-9A-F]{4}.*use an ordinary space"):
        validate_label(label)


@pytest.mark.parametrize("label", ["\u0301\u0301", "\u0301", "\u20dd", "a\u0301"[1:] * 3])
def test_labels_of_combining_marks_alone_are_refused(label):
    with pytest.raises(GalleryError, match="no letter, digit, symbol or punctuation"):
        validate_label(label)


@pytest.mark.parametrize("label", ["\u0441up", "\uff23\uff35\uff30", "e\u0301t\u00e9", "5",
                                   "?", "\u2764\ufe0e"[:1]])
def test_look_alikes_across_scripts_and_single_visible_characters_pass(label):
    # Cyrillic es, full-width letters: legitimate multilingual text (module docstring).
    assert validate_label(label) == unicodedata.normalize("NFC", label)


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
    assert all(unicodedata.category(c) != "Zs" or c == " " for c in out)
    assert not any(0xFE00 <= ord(c) <= 0xFE0F or 0xE0000 <= ord(c) <= 0xE0FFF
                   or c in "\u034f\u115f\u1160\u3164\uffa0\u2800\u17b4\u17b5" for c in out)
    assert any(unicodedata.category(c)[0] in "LNSP" for c in out)
    assert validate_label(out) == out              # idempotent
