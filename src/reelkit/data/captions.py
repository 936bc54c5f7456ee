"""The demo world's language: attribute names, synonyms, caption templates and a prompt parser.

Captions are written from templates with synonyms and varied word order; :func:`parse_prompt`
reads any such caption (or a user's prompt in the same vocabulary) back into structured labels.
The two are inverse on every caption the world writes, which the tests check.

>>> from reelkit.data.captions import parse_prompt
>>> parsed = parse_prompt("a crimson ball slides to the right on a grey background")
>>> parsed.objects[0]
PartialObject(shape='circle', color='red', motion='right')
>>> parsed.background
PartialBackground(kind='solid', colors=('grey',), texture=None)
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np

from reelkit.errors import PromptError

# Canonical attribute names, in label-index order (the index is the class id used by the judge).
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "rotate", "bounce", "static")
BACKGROUND_COLORS = ("black", "grey", "white", "navy", "brown", "beige")
TEXTURES = ("brick", "grass", "gravel", "moon")
BACKGROUND_KINDS = ("solid", "gradient", "texture")

SHAPE_SYNONYMS = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "star": ("star",),
    "cross": ("cross", "plus"),
}
COLOR_SYNONYMS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "amber"),
    "yellow": ("yellow", "golden"),
    "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue", "cobalt"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "rose"),
}
BACKGROUND_COLOR_SYNONYMS = {
    "black": ("black", "dark"),
    "grey": ("grey", "gray"),
    "white": ("white",),
    "navy": ("navy",),
    "brown": ("brown",),
    "beige": ("beige", "cream"),
}
# Each texture: (words that name it, phrases a caption uses for it).
TEXTURE_PHRASES = {
    "brick": ("on a brick wall", "against a wall of bricks", "on bricks"),
    "grass": ("on grass", "on a grassy field", "over the grass"),
    "gravel": ("on gravel", "on a bed of pebbles", "over gravel"),
    "moon": ("on the moon", "on a lunar surface", "over the surface of the moon"),
}
TEXTURE_WORDS = {
    "brick": ("brick", "bricks"),
    "grass": ("grass", "grassy"),
    "gravel": ("gravel", "pebbles"),
    "moon": ("moon", "lunar"),
}
# Motion phrases as (participle, present tense) pairs: "a red circle moving right" / "... moves right".
MOTION_PHRASES = {
    "left": (("moving left", "moves left"), ("sliding to the left", "slides to the left"),
             ("drifting leftward", "drifts leftward"), ("heading left", "heads left")),
    "right": (("moving right", "moves right"), ("sliding to the right", "slides to the right"),
              ("drifting rightward", "drifts rightward"), ("heading right", "heads right")),
    "up": (("moving up", "moves up"), ("rising", "rises"), ("floating upward", "floats upward"),
           ("climbing", "climbs")),
    "down": (("moving down", "moves down"), ("falling", "falls"), ("sinking", "sinks"),
             ("dropping", "drops")),
    "grow": (("growing", "grows"), ("expanding", "expands"), ("getting bigger", "gets bigger"),
             ("swelling", "swells")),
    "shrink": (("shrinking", "shrinks"), ("getting smaller", "gets smaller"),
               ("contracting", "contracts")),
    "rotate": (("rotating", "rotates"), ("spinning", "spins"), ("turning around", "turns around")),
    "bounce": (("bouncing", "bounces"), ("hopping", "hops"), ("bouncing along", "bounces along")),
    "static": (("standing still", "stands still"), ("staying still", "stays still"), ("resting", "rests"),
               ("not moving", "does not move")),
}
# The words that decide a motion; every other word of a motion phrase is neutral.
MOTION_KEYWORDS = {
    "left": ("left", "leftward"),
    "right": ("right", "rightward"),
    "up": ("up", "upward", "rising", "rises", "climbing", "climbs"),
    "down": ("down", "downward", "falling", "falls", "sinking", "sinks", "dropping", "drops"),
    "grow": ("growing", "grows", "expanding", "expands", "bigger", "swelling", "swells"),
    "shrink": ("shrinking", "shrinks", "smaller", "contracting", "contracts"),
    "rotate": ("rotating", "rotates", "spinning", "spins", "turning", "turns"),
    "bounce": ("bouncing", "bounces", "hopping", "hops"),
    "static": ("still", "resting", "rests", "static", "motionless", "not"),
}
SOLID_PHRASES = ("on a {c} background", "against a {c} backdrop", "over a {c} background")
GRADIENT_PHRASES = ("on a {a} to {b} gradient", "against a gradient from {a} to {b}",
                    "over a {a} and {b} gradient background")
# Words that end one object's description so the next colour or shape starts a new object.
JOINERS = ("and", "while", "as", "whereas")
# Words that carry no attribute. Together with the words above they make the vocabulary.
FILLERS = ("a", "an", "the", "there", "is", "are", "on", "over", "against", "background", "backdrop",
           "gradient", "from", "to", "of", "wall", "field", "bed", "surface", "moving", "moves", "move",
           "sliding", "slides", "drifting", "drifts", "heading", "heads", "floating", "floats", "getting",
           "gets", "around", "standing", "stands", "staying", "stays", "does", "shape", "object", "with",
           "in", "video", "clip", "scene", "one", "two", "another", "second", "first", "other", "its",
           "along")

_LOOKUP: dict[str, tuple[str, str]] = {}
for _kind, _table in (("shape", SHAPE_SYNONYMS), ("color", COLOR_SYNONYMS),
                      ("bgcolor", BACKGROUND_COLOR_SYNONYMS), ("texture", TEXTURE_WORDS),
                      ("motion", MOTION_KEYWORDS)):
    for _name, _words in _table.items():
        for _word in _words:
            _LOOKUP[_word] = (_kind, _name)
for _word in JOINERS:
    _LOOKUP[_word] = ("joiner", _word)
for _word in FILLERS:
    _LOOKUP.setdefault(_word, ("filler", _word))

VOCABULARY: frozenset[str] = frozenset(_LOOKUP)
"""Every word a caption uses, and so every word a text encoder of the world knows."""

# Words people write about such scenes that the demo world does not render: every object has one size
# and one speed. A prompt may use them; they are dropped with a notice (see :func:`drop_unrendered_words`).
UNRENDERED_WORDS = {
    **dict.fromkeys(("small", "big", "large", "tiny", "huge", "little"), "size"),
    **dict.fromkeys(("slowly", "quickly", "fast", "slow", "quick", "rapidly", "swiftly", "gently"), "speed"),
}

_TOKEN = re.compile(r"[a-z]+|[^a-z\s]")


@dataclass(frozen=True)
class PartialObject:
    """One object as a prompt describes it; ``None`` marks an attribute the prompt leaves open."""

    shape: str | None = None
    color: str | None = None
    motion: str | None = None


@dataclass(frozen=True)
class PartialBackground:
    kind: str | None = None
    colors: tuple[str, ...] = ()
    texture: str | None = None


@dataclass(frozen=True)
class ParsedPrompt:
    objects: tuple[PartialObject, ...] = field(default_factory=tuple)
    background: PartialBackground = field(default_factory=PartialBackground)


def tokenize(prompt: str) -> list[str]:
    """Lower-case words; punctuation and hyphens are dropped."""
    return [t for t in _TOKEN.findall(prompt.lower().replace("-", " ")) if t.isalpha()]


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` outside :data:`VOCABULARY` and :data:`UNRENDERED_WORDS`, each once, in order."""
    return [t for t in dict.fromkeys(tokenize(prompt)) if t not in VOCABULARY and t not in UNRENDERED_WORDS]


def vocabulary_groups() -> list[tuple[str, str]]:
    """``(title, "name (synonyms); ...")`` for shapes, colours, motions, backgrounds and textures: the vocabulary as
    ``reelkit world vocab`` and the studio show it."""
    tables = (("shapes", SHAPE_SYNONYMS), ("colours", COLOR_SYNONYMS), ("motions", MOTION_KEYWORDS),
              ("backgrounds", BACKGROUND_COLOR_SYNONYMS), ("textures", TEXTURE_WORDS))
    return [(title, "; ".join(f"{k} ({', '.join(v)})" for k, v in table.items())) for title, table in tables]


_UNRENDERED = re.compile(r"\b(" + "|".join(sorted(UNRENDERED_WORDS)) + r")\b", re.IGNORECASE)


def drop_unrendered_words(prompt: str) -> tuple[str, str | None]:
    """``(prompt without size and speed words, a one-line notice naming them or None)``.

    >>> clean, notice = drop_unrendered_words("a small red square moving quickly left")
    >>> clean
    'a red square moving left'
    >>> notice
    "the demo world draws every object at one size and one speed; ignored: 'small', 'quickly'"
    """
    found = list(dict.fromkeys(word.lower() for word in _UNRENDERED.findall(prompt)))
    if not found:
        return prompt, None
    kinds = dict.fromkeys(UNRENDERED_WORDS[word] for word in found)
    what = " and ".join(f"one {kind}" for kind in kinds)
    notice = f"the demo world draws every object at {what}; ignored: " + ", ".join(f"'{w}'" for w in found)
    clean = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(_UNRENDERED.sub(" ", prompt).split()))
    return clean, notice


_TEXTURE_PLACES = {"brick": "a brick wall", "grass": "grass", "gravel": "gravel", "moon": "the surface of the moon"}


def check_object_colors(prompt: str) -> None:
    """Raise :class:`PromptError` when a background-only colour (black, white, navy, ...) or texture (brick,
    grass, ...) is given to an object ("a black circle", "a brick square"): the world cannot draw it, and reading
    it as the background would change the prompt silently."""
    tokens = tokenize(prompt)
    for word, following in zip(tokens, tokens[1:], strict=False):
        kind = _LOOKUP.get(word, ("",))[0]
        if kind in ("bgcolor", "texture") and _LOOKUP.get(following, ("",))[0] in ("shape", "color"):
            name = _LOOKUP[word][1]
            example = f"a red {following}" if _LOOKUP[following][0] == "shape" else f"a {following} circle"
            where = f"a {name} background" if kind == "bgcolor" else _TEXTURE_PLACES[name]
            raise PromptError(f"'{word}' is a background {'colour' if kind == 'bgcolor' else 'texture'} in the "
                              f"demo world; objects are {', '.join(COLORS)} (e.g. '{example} on {where}')")


def _suggest(word: str) -> str:
    """``'circel' (did you mean circle?)``: the closest known words, those within 0.1 of the best."""
    accepted = VOCABULARY | set(UNRENDERED_WORDS)
    scored = sorted(((difflib.SequenceMatcher(None, word, known).ratio(), known) for known in accepted),
                    key=lambda pair: (-pair[0], pair[1]))
    best = scored[0][0]
    close = [known for ratio, known in scored[:3] if ratio >= max(0.6, best - 0.1)]
    return f"'{word}' (did you mean {' / '.join(close)}?)" if close else f"'{word}'"


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Read a prompt in the demo world's vocabulary into (possibly partial) labels.

    Colours and shapes are grouped into objects in reading order ("and"/"while" start a new one);
    a motion word belongs to the object being described, or to the next one if none has started.
    Size and speed words are skipped (the world renders neither). Raises :class:`PromptError` naming unknown
    words and the closest known ones, or for a background-only colour given to an object.
    """
    unknown = unknown_words(prompt)
    if unknown:
        names = ", ".join(_suggest(w) for w in unknown)
        raise PromptError(f"unknown word{'s' if len(unknown) > 1 else ''} in prompt: {names}")
    check_object_colors(prompt)
    tokens = [t for t in tokenize(prompt) if t not in UNRENDERED_WORDS]

    objects: list[dict[str, str | None]] = []
    current: dict[str, str | None] | None = None
    pending_motion: str | None = None
    bg_colors: list[str] = []
    texture: str | None = None
    said_gradient = False

    def start_object() -> dict[str, str | None]:
        obj = {"shape": None, "color": None, "motion": pending_motion}
        objects.append(obj)
        return obj

    for token in tokens:
        kind, name = _LOOKUP[token]
        if kind in ("shape", "color"):
            if current is None or current[kind] is not None:
                current = start_object()
                pending_motion = None
            current[kind] = name
        elif kind == "motion":
            target = current
            if target is None:
                if pending_motion not in (None, name):
                    raise PromptError(f"'{prompt}' gives two motions ({pending_motion}, {name}) to one object")
                pending_motion = name
            elif target["motion"] not in (None, name):
                raise PromptError(
                    f"'{prompt}' gives two motions ({target['motion']}, {name}) to one object; "
                    "join two objects with 'and'"
                )
            else:
                target["motion"] = name
        elif kind == "joiner":
            current = None
        elif kind == "bgcolor":
            if name not in bg_colors:
                bg_colors.append(name)
        elif kind == "texture":
            texture = name
        elif token == "gradient":
            said_gradient = True

    if pending_motion is not None:
        if objects:
            raise PromptError(f"in '{prompt}' the motion '{pending_motion}' belongs to no object")
        objects.append({"shape": None, "color": None, "motion": pending_motion})
    if len(objects) > 2:
        raise PromptError(f"the demo world shows 1 or 2 objects; '{prompt}' describes {len(objects)}")
    if texture is not None and bg_colors:
        raise PromptError(f"'{prompt}' names both a texture ({texture}) and background colours")
    if len(bg_colors) > 2:
        raise PromptError(f"a background has at most 2 colours; '{prompt}' names {len(bg_colors)}")
    if texture is not None:
        background = PartialBackground("texture", (), texture)
    elif len(bg_colors) == 2 or said_gradient:
        background = PartialBackground("gradient", tuple(bg_colors), None)
    elif bg_colors:
        background = PartialBackground("solid", tuple(bg_colors), None)
    else:
        background = PartialBackground()
    for obj in objects:
        if obj["shape"] == "circle" and obj["motion"] == "rotate":
            raise PromptError("a rotating circle looks exactly like a still one; pick another shape or motion")
    return ParsedPrompt(tuple(PartialObject(**o) for o in objects), background)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def write_caption(objects, background, rng: np.random.Generator) -> str:
    """Write one caption for a scene, drawing synonyms, templates and word order from ``rng``.

    ``objects`` are items with ``shape``, ``color`` and ``motion``; ``background`` has ``kind``,
    ``colors`` and ``texture`` (the world's :class:`~reelkit.data.world.Scene` fields).
    """
    present = bool(rng.integers(2))  # one tense for the whole caption reads better
    clauses = []
    for obj in objects:
        color = _choice(rng, COLOR_SYNONYMS[obj.color])
        shape = _choice(rng, SHAPE_SYNONYMS[obj.shape])
        motion = _choice(rng, MOTION_PHRASES[obj.motion])[int(present)]
        if rng.random() < 0.15:  # "a ball, crimson, ..." exercises adjective-after-noun order
            clauses.append(f"{_article(shape)} {shape}, {color}, {motion}")
        else:
            clauses.append(f"{_article(color)} {color} {shape} {motion}")
    joiner = _choice(rng, (" and ", " while ", ", and ")) if present else _choice(rng, (" and ", ", and "))
    subject = joiner.join(clauses)

    if background.kind == "texture":
        setting = _choice(rng, TEXTURE_PHRASES[background.texture])
    else:
        words = [_choice(rng, BACKGROUND_COLOR_SYNONYMS[c]) for c in background.colors]
        if background.kind == "solid":
            setting = _choice(rng, SOLID_PHRASES).format(c=words[0])
        else:
            setting = _choice(rng, GRADIENT_PHRASES).format(a=words[0], b=words[1])
    if rng.random() < 0.15:
        return subject  # some captions leave the background unsaid, like real ones
    if rng.random() < 0.3:
        return f"{setting}, {subject}"
    return f"{subject} {setting}"
