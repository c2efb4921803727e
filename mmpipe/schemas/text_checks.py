"""Is a caption text, or garbage? A character-level test that typos cannot trip.

Misspelt words are still letters, so the test looks only at characters no human-typed
caption contains: control characters, private-use and unassigned code points, the
replacement character left by a bad decode, invisible format characters, line/paragraph
separators, and combining marks that sit on nothing.
"""

from __future__ import annotations

import unicodedata

# Whitespace controls that ordinary multi-line text does contain.
_ALLOWED_CONTROLS = frozenset("\t\n\r")
# Format characters with a legitimate job in emoji sequences and some scripts.
_ALLOWED_FORMAT = frozenset("\u200c\u200d")  # zero-width non-joiner, zero-width joiner

_CATEGORY_NAMES = {
    "Cc": "control character",
    "Cf": "invisible format character",
    "Co": "private-use character",
    "Cs": "lone surrogate",
    "Cn": "unassigned code point",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}


# Vietnamese stacks two accents on a letter; more than that is "zalgo" noise.
_MAX_STACKED_MARKS = 2


def _odd_character(base: str | None, stacked_marks: int, char: str) -> str | None:
    """Why ``char`` does not belong in a caption, or None when it may.

    ``base`` is the last character that is not a combining mark, ``stacked_marks`` how many
    combining marks follow it before ``char``.
    """
    if char == "\ufffd":
        return "replacement character (a failed decode)"
    category = unicodedata.category(char)
    if category == "Cc" and char not in _ALLOWED_CONTROLS:
        return _CATEGORY_NAMES[category]
    if category == "Cf" and char not in _ALLOWED_FORMAT:
        return _CATEGORY_NAMES[category]
    if category in ("Co", "Cs", "Cn", "Zl", "Zp"):
        return _CATEGORY_NAMES[category]
    if category == "Mn":
        if base is None or not unicodedata.category(base).startswith("L"):
            return "combining mark with no letter to attach to"
        if stacked_marks >= _MAX_STACKED_MARKS:
            return "pile of combining marks"
    return None


def garbled_reason(text: str) -> str | None:
    """Why ``text`` looks garbled, naming the first offending character; None if it looks fine.

    >>> garbled_reason("Cute scarlet stripy star, so dreamy!") is None
    True
    >>> garbled_reason("Cute scralet stipy star, so dremy!") is None  # typos are fine
    True
    >>> garbled_reason("star\\x07\\ue001")
    'control character U+0007 at position 4'
    """
    base, stacked_marks = None, 0
    for position, char in enumerate(text):
        reason = _odd_character(base, stacked_marks, char)
        if reason is not None:
            return f"{reason} U+{ord(char):04X} at position {position}"
        if unicodedata.category(char) == "Mn":
            stacked_marks += 1
        else:
            base, stacked_marks = char, 0
    return None


def looks_garbled(text: str) -> bool:
    return garbled_reason(text) is not None
