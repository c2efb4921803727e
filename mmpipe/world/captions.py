"""The words of the generated world: pin titles and descriptions, board names, typos, garbage.

Captions describe only *some* attributes of a pin's main object, through synonyms, so that
text and image each carry information the other lacks. Every synonym maps back to exactly
one attribute value, which is what ``mentioned_values`` relies on to read a text back.
"""

from __future__ import annotations

import re

import numpy as np

from mmpipe.world.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, ObjectSpec

# Every phrase a caption may use for an attribute value. Shapes are nouns, outlines are
# phrases that follow the noun, everything else is an adjective. No phrase appears in two
# values, and no template or distractor below contains any of them as a whole word.
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "disc", "orb"),
        "square": ("square", "block"),
        "triangle": ("triangle", "pyramid"),
        "star": ("star", "starburst"),
        "diamond": ("diamond", "rhombus", "lozenge"),
        "hexagon": ("hexagon", "hex"),
        "heart": ("heart", "love heart"),
        "cross": ("cross", "plus sign"),
    },
    "color": {
        "red": ("red", "crimson", "scarlet"),
        "orange": ("orange", "tangerine", "amber"),
        "yellow": ("yellow", "golden", "lemon"),
        "green": ("green", "emerald", "lime"),
        "blue": ("blue", "azure", "cobalt"),
        "purple": ("purple", "violet", "lilac"),
        "pink": ("pink", "rosy", "blush"),
        "white": ("white", "snowy", "ivory"),
    },
    "pattern": {
        "solid": ("solid", "plain", "solid-color"),
        "striped": ("striped", "stripy", "lined"),
        "dotted": ("dotted", "polka-dot", "spotty"),
        "checkered": ("checkered", "checked", "gingham"),
        "ringed": ("ringed", "concentric", "bullseye"),
    },
    "size": {
        "tiny": ("tiny", "teeny", "mini"),
        "small": ("small", "little"),
        "medium": ("medium", "mid-size", "medium-sized"),
        "large": ("large", "big", "huge"),
    },
    "outline": {
        "none": ("no outline", "no border"),
        "thin": ("thin outline", "fine border"),
        "thick": ("thick outline", "bold border"),
        "double": ("double outline", "double border"),
    },
}

# How often a caption mentions each attribute. Colour and shape are what people name;
# pattern, size and outline are mostly left to the image (and to board themes). The mean
# is about 2.5 of 5: captions describe about half of what the image shows.
MENTION_PROBABILITY: dict[str, float] = {
    "shape": 0.7,
    "color": 0.75,
    "pattern": 0.45,
    "size": 0.3,
    "outline": 0.25,
}

# Nouns standing in for the object when the caption does not name its shape.
GENERIC_NOUNS = ("shape", "design", "motif", "graphic", "piece", "print")

# Words that carry no attribute information, as people sprinkle them into pins.
DISTRACTOR_ADJECTIVES = ("cute", "aesthetic", "pretty", "cozy", "trendy", "minimal", "dreamy")
DISTRACTOR_NOUNS = ("inspo", "idea", "vibes", "goals", "moodboard material", "decor idea")

DESCRIPTION_TEMPLATES = (
    "Look at this {np}! So {adj}.",
    "Found {a_np} on my feed today and had to save it, total {noun}.",
    "{A_np} on a soft textured background. Great {noun} for the next project.",
    "Obsessed with this {np}, it is so {adj}.",
    "Here is {a_np}, perfect {noun} for a wall collage.",
    "Saving {a_np} for later. {Adj} and easy to love!",
    "Such {a_np}, I love how it turned out. #{adj}",
    "Simple {np} {noun} for your wall art, {adj} and fun.",
    "My new favorite: {a_np}. Pure {noun}.",
)
TITLE_TEMPLATES = (
    "{words}",
    "{words} {noun}",
    "{adj} {words}",
    "{words} #{adj} #{noun_tag}",
    "{Words}",
)


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def choose_mentions(rng: np.random.Generator) -> list[str]:
    """Which attributes of the main object a pin's text will mention (at least one)."""
    mentioned = [name for name in ATTRIBUTE_NAMES if rng.random() < MENTION_PROBABILITY[name]]
    if not mentioned:
        weights = np.array([MENTION_PROBABILITY[name] for name in ATTRIBUTE_NAMES])
        mentioned = [ATTRIBUTE_NAMES[rng.choice(len(ATTRIBUTE_NAMES), p=weights / weights.sum())]]
    return mentioned


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(words: dict[str, str], generic_noun: str) -> str:
    """'big crimson stripy star with a thick outline' from the chosen synonym per attribute."""
    adjectives = [words[name] for name in ("size", "color", "pattern") if name in words]
    phrase = " ".join(adjectives + [words.get("shape", generic_noun)])
    if "outline" in words:
        outline = words["outline"]
        phrase += f" with {outline}" if outline.startswith("no ") else f" with a {outline}"
    return phrase


def pin_caption(
    spec: ObjectSpec, mentioned: list[str], rng: np.random.Generator, typo_rate: float = 0.0
) -> tuple[str, str]:
    """A (title, description) pair describing the ``mentioned`` attributes of ``spec``.

    The description names every mentioned attribute in a chatty sentence; the title is a
    short tag-like phrase naming one or two of them. Typos are applied to both afterwards.
    """
    values = spec.as_dict()
    # One synonym per attribute for the description, drawn again for the title so the two
    # fields rarely share their exact wording.
    description_words = {name: _pick(rng, SYNONYMS[name][values[name]]) for name in mentioned}
    generic_noun = _pick(rng, GENERIC_NOUNS)
    np_text = _noun_phrase(description_words, generic_noun)
    adj = _pick(rng, DISTRACTOR_ADJECTIVES)
    noun = _pick(rng, DISTRACTOR_NOUNS)
    a_np = f"{_article(np_text)} {np_text}"
    description = _pick(rng, DESCRIPTION_TEMPLATES).format(
        np=np_text, a_np=a_np, A_np=a_np[0].upper() + a_np[1:], adj=adj, Adj=adj.capitalize(), noun=noun
    )

    n_title = min(len(mentioned), int(rng.integers(1, 3)))
    title_attributes = [mentioned[i] for i in sorted(rng.choice(len(mentioned), n_title, replace=False))]
    title_words = {name: _pick(rng, SYNONYMS[name][values[name]]) for name in title_attributes}
    adjectives = [title_words[name] for name in ("size", "color", "pattern") if name in title_words]
    words = " ".join(adjectives + [title_words.get("shape") or _pick(rng, GENERIC_NOUNS)])
    if "outline" in title_words:
        words += f" w/ {title_words['outline']}"
    title_adj = _pick(rng, DISTRACTOR_ADJECTIVES)
    title = _pick(rng, TITLE_TEMPLATES).format(
        words=words,
        Words=words.title(),
        noun=_pick(rng, DISTRACTOR_NOUNS),
        adj=title_adj,
        noun_tag=_pick(rng, DISTRACTOR_NOUNS).replace(" ", ""),
    )
    return add_typos(title, rng, typo_rate), add_typos(description, rng, typo_rate)


def board_text(theme: dict[str, str], rng: np.random.Generator) -> tuple[str, str]:
    """A (name, description) pair for a board whose theme is ``theme`` (attribute -> value)."""
    words = {name: _pick(rng, SYNONYMS[name][value]) for name, value in theme.items()}
    adjectives = " ".join(words[name] for name in ("size", "color", "pattern") if name in words)
    outline = ""
    if "outline" in words:
        outline = f" with {words['outline']}" if words["outline"].startswith("no ") else f" with a {words['outline']}"
    if "shape" in words:
        core = f"{adjectives} {words['shape']}".strip()
        name = _pick(rng, ("{c} collection", "{c} ideas", "my {c} board", "all about the {c}")).format(c=core)
        subject = f"anything shaped like {_article(core)} {core}"
    else:
        core = adjectives or "things"
        if adjectives:
            name = _pick(rng, ("{c} things", "all things {c}", "{c} inspo", "{c} finds")).format(c=core)
        else:
            name = "things"
        subject = f"{core} pins" if adjectives else "pins"
    name += outline
    subject += outline
    description = _pick(
        rng,
        (
            "A board for {s}.",
            "Collecting {s} I come across.",
            "Only {s} here, nothing else.",
            "Everything I save about {s}.",
        ),
    ).format(s=subject)
    return name, description


_WORD_WITH_PUNCTUATION = re.compile(r"^([A-Za-z]{4,})([^A-Za-z]*)$")


def add_typos(text: str, rng: np.random.Generator, rate: float) -> str:
    """Misspell each word of four or more letters with probability ``rate``."""
    if rate <= 0:
        return text
    words = text.split(" ")
    for i, token in enumerate(words):
        match = _WORD_WITH_PUNCTUATION.match(token)
        if match is None or rng.random() >= rate:
            continue
        word, tail = match.groups()
        k = int(rng.integers(1, len(word) - 1))
        kind = int(rng.integers(3))
        if kind == 0:  # swapped neighbours
            word = word[: k - 1] + word[k] + word[k - 1] + word[k + 1 :]
        elif kind == 1:  # dropped letter
            word = word[:k] + word[k + 1 :]
        else:  # doubled letter
            word = word[:k] + word[k] + word[k:]
        words[i] = word + tail
    return " ".join(words)


# A phrase counts only as a whole word: 'hex' is not found in 'hexagon', nor 'solid' in
# 'solid-color'. Phrases inside longer ones ('heart' in 'love heart') name the same value.
_MENTION_REGEX = [
    (re.compile(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])", re.IGNORECASE), name, value)
    for name in ATTRIBUTE_NAMES
    for value in ATTRIBUTES[name]
    for phrase in SYNONYMS[name][value]
]


def mentioned_values(text: str) -> set[tuple[str, str]]:
    """The (attribute, value) pairs a text names through any of their synonyms.

    >>> sorted(mentioned_values("Cute scarlet stripy star with a thick outline"))
    [('color', 'red'), ('outline', 'thick'), ('pattern', 'striped'), ('shape', 'star')]
    """
    return {(name, value) for regex, name, value in _MENTION_REGEX if regex.search(text)}


def garbled_text(rng: np.random.Generator, length: int) -> str:
    """A string of control characters and odd code points: clearly not a caption."""
    pools = (
        [chr(c) for c in range(1, 32) if chr(c) not in "\t\n\r"],
        [chr(c) for c in range(0xE000, 0xE040)],  # private use area
        [chr(c) for c in range(0x0300, 0x0340)],  # lone combining marks
        ["\ufffd", "\ufeff", "\u202e", "\u200b", "\u2028", "\x7f"],
    )
    flat = [ch for pool in pools for ch in pool]
    return "".join(flat[int(i)] for i in rng.integers(len(flat), size=length))
