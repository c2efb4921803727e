"""Is a caption text, or garbage? A character-level test that typos cannot trip.

Misspelt words are still letters, so the test looks only at what no human-typed caption
contains: control characters, private-use and unassigned code points, the replacement
character left by a bad decode, invisible format characters, line/paragraph separators,
combining marks that sit on nothing or pile up ("zalgo"), and mojibake (UTF-8 bytes read
as Windows-1252 or Latin-1: "CafÃ©" for "Café").

What real text does contain passes: emoji with a variation selector ("❤️" is U+2764
U+FE0F, and U+FE0F is a combining mark), zero-width-joiner sequences ("👩‍🎨"), keycaps,
flag tag sequences, and scripts whose vowel signs are combining marks on a consonant that
may already carry a nukta and another mark (Hindi "पढ़ें": one consonant, three marks).
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

# Generic combining marks (Unicode names "COMBINING ...": accents usable on any letter) are
# what zalgo text piles up; Vietnamese stacks two of them on a letter, more is noise.
_MAX_STACKED_GENERIC_MARKS = 2
# A script's own marks (Devanagari nukta + vowel sign + anusvara, Hebrew dagesh + shin dot +
# vowel + cantillation) legitimately stack deeper on one consonant; more than this is not a
# syllable of any script.
_MAX_STACKED_SCRIPT_MARKS = 4


def _is_variation_selector(char: str) -> bool:
    code = ord(char)
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF


def _is_emoji_tag(char: str) -> bool:
    """Tag characters spell a subdivision flag after U+1F3F4 (England: gbeng), ending with
    CANCEL TAG U+E007F."""
    return 0xE0020 <= ord(char) <= 0xE007F


def _is_generic_mark(char: str) -> bool:
    return unicodedata.name(char, "").startswith("COMBINING")


def _can_carry_marks(char: str | None) -> bool:
    """Letters, digits, symbols (emoji) and punctuation start a cluster marks may join;
    spaces, controls and nothing at all do not."""
    return char is not None and unicodedata.category(char)[0] in "LNSP"


class _Cluster:
    """The character a run of marks sits on, and how many of each kind sit on it so far."""

    def __init__(self) -> None:
        self.base: str | None = None
        self.previous: str | None = None
        self.generic_marks = 0
        self.script_marks = 0

    def add(self, char: str) -> None:
        category = unicodedata.category(char)
        if category == "Mn" and not _is_variation_selector(char):
            if _is_generic_mark(char):
                self.generic_marks += 1
            else:
                self.script_marks += 1
        elif not (category in ("Mc", "Me") or _is_variation_selector(char) or _is_emoji_tag(char)):
            # spacing vowel signs, enclosing keycaps, selectors and tags extend the cluster
            self.base, self.generic_marks, self.script_marks = char, 0, 0
        self.previous = char


def _odd_character(cluster: _Cluster, char: str) -> str | None:
    """Why ``char`` does not belong in a caption after the characters ``cluster`` has seen,
    or None when it may."""
    if char == "\ufffd":
        return "replacement character (a failed decode)"
    category = unicodedata.category(char)
    if _is_variation_selector(char):
        return None if _can_carry_marks(cluster.previous) else "variation selector with nothing to select"
    if _is_emoji_tag(char):
        previous = cluster.previous
        in_sequence = previous is not None and (_is_emoji_tag(previous) or unicodedata.category(previous) == "So")
        return None if in_sequence else "tag character outside an emoji flag"
    if category == "Cc" and char not in _ALLOWED_CONTROLS:
        return _CATEGORY_NAMES[category]
    if category == "Cf" and char not in _ALLOWED_FORMAT:
        return _CATEGORY_NAMES[category]
    if category in ("Co", "Cs", "Cn", "Zl", "Zp"):
        return _CATEGORY_NAMES[category]
    if category in ("Mn", "Mc", "Me"):
        if not _can_carry_marks(cluster.base):
            return "combining mark with no letter to attach to"
        if category == "Mn":
            if _is_generic_mark(char) and cluster.generic_marks >= _MAX_STACKED_GENERIC_MARKS:
                return "pile of combining marks"
            if cluster.generic_marks + cluster.script_marks >= _MAX_STACKED_SCRIPT_MARKS:
                return "pile of combining marks"
    return None


def mojibake_reason(text: str) -> str | None:
    """Text that was UTF-8, decoded as Windows-1252 or Latin-1: re-encoding it so gives
    valid UTF-8 that reads differently. Real Latin-1 text ("Café", "naïve") does not
    re-encode to valid UTF-8, so it passes.

    >>> mojibake_reason("CafÃ© crÃ¨me")
    "mojibake 'Ã©' at position 3 (UTF-8 read as cp1252: 'Café crème')"
    >>> mojibake_reason("Café crème") is None
    True
    """
    if text.isascii():
        return None
    for codec in ("cp1252", "latin-1"):
        try:
            fixed = text.encode(codec).decode("utf-8")
        except UnicodeError:
            continue
        if fixed != text:
            position = next(i for i, char in enumerate(text) if not char.isascii())
            return f"mojibake {text[position:position + 2]!r} at position {position} (UTF-8 read as {codec}: {fixed[:40]!r})"
    return None


def garbled_reason(text: str) -> str | None:
    """Why ``text`` looks garbled, naming the first offending character; None if it looks fine.

    >>> garbled_reason("Cute scarlet stripy star, so dreamy!") is None
    True
    >>> garbled_reason("Cute scralet stipy star, so dremy!") is None  # typos are fine
    True
    >>> garbled_reason("I \\u2764\\ufe0f this \\U0001f469\\u200d\\U0001f3a8 पढ़ें") is None
    True
    >>> garbled_reason("star\\x07\\ue001")
    'control character U+0007 at position 4'
    """
    cluster = _Cluster()
    for position, char in enumerate(text):
        reason = _odd_character(cluster, char)
        if reason is not None:
            return f"{reason} U+{ord(char):04X} at position {position}"
        cluster.add(char)
    return mojibake_reason(text)


def looks_garbled(text: str) -> bool:
    return garbled_reason(text) is not None
