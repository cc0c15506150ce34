"""The concept vocabulary of the miniature world: objects, colours and background styles.

Every concept has a canonical name (what recipes and registry entries use), a kind, and
synonyms that captions draw from. Because images are drawn procedurally, the ground truth
of every image is known exactly, which is what makes erasure measurable.

Example:
    >>> from robust_encoders.miniature import CONCEPTS
    >>> CONCEPTS["star"].kind, CONCEPTS["star"].synonyms[:2]
    ('object', ('star', 'pentagram'))
    >>> sorted(c.name for c in CONCEPTS.values() if c.kind == "style")
    ['checker', 'dots', 'plain', 'stripes']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Concept", "CONCEPTS", "OBJECTS", "COLOURS", "STYLES", "KINDS", "concepts_of_kind", "get_concept"]


@dataclass(frozen=True)
class Concept:
    """One concept of the miniature world."""

    name: str
    kind: str  # "object" | "colour" | "style"
    synonyms: tuple[str, ...]
    rgb: tuple[int, int, int] | None = None  # colours only

    @property
    def index(self) -> int:
        """Position of this concept among the concepts of its kind (the detector's class id)."""
        return concepts_of_kind(self.kind).index(self.name)


OBJECTS = ("circle", "square", "triangle", "star", "heart", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple")
STYLES = ("plain", "stripes", "checker", "dots")
KINDS = ("object", "colour", "style")

_SYNONYMS = {
    "circle": ("circle", "disc", "round shape", "orb"),
    "square": ("square", "box", "block", "quadrilateral"),
    "triangle": ("triangle", "pyramid shape", "three-sided shape", "wedge"),
    "star": ("star", "pentagram", "five-pointed star", "starburst"),
    "heart": ("heart", "love heart", "valentine", "heart shape"),
    "cross": ("cross", "plus sign", "plus", "crucifix"),
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "leafy green"),
    "blue": ("blue", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "lemon"),
    "purple": ("purple", "violet", "lilac"),
    "plain": ("plain", "blank", "empty"),
    "stripes": ("striped", "stripy", "lined"),
    "checker": ("checkered", "checkerboard", "chequered"),
    "dots": ("dotted", "polka-dot", "spotty"),
}

_RGB = {
    "red": (215, 35, 35),
    "green": (35, 160, 50),
    "blue": (40, 70, 215),
    "yellow": (235, 205, 25),
    "purple": (140, 45, 185),
}


def _build() -> dict[str, Concept]:
    out: dict[str, Concept] = {}
    for kind, names in (("object", OBJECTS), ("colour", COLOURS), ("style", STYLES)):
        for n in names:
            out[n] = Concept(n, kind, _SYNONYMS[n], _RGB.get(n))
    return out


CONCEPTS: dict[str, Concept] = _build()


def concepts_of_kind(kind: str) -> tuple[str, ...]:
    """Canonical names of one kind, in detector class order."""
    table = {"object": OBJECTS, "colour": COLOURS, "color": COLOURS, "style": STYLES}
    if kind not in table:
        raise ValueError(f"Unknown concept kind {kind!r}; expected one of {KINDS}.")
    return table[kind]


def get_concept(name: str) -> Concept:
    """Look a concept up by canonical name or synonym (case-insensitive)."""
    key = name.strip().lower().replace("_", " ")
    if key in CONCEPTS:
        return CONCEPTS[key]
    for c in CONCEPTS.values():
        if key in c.synonyms:
            return c
    import difflib

    close = difflib.get_close_matches(key, list(CONCEPTS), n=3)
    raise KeyError(
        f"Unknown miniature concept {name!r}. Known concepts: {', '.join(CONCEPTS)}"
        + (f". Did you mean: {', '.join(close)}?" if close else ".")
    )
