"""Captions for miniature scenes: many templates and synonyms, some phrasings held out.

Training captions use ``TRAIN_TEMPLATES``; ``HELDOUT_TEMPLATES`` are never seen in
training and measure whether the model (and an erasure) generalises to new phrasings.
Synonyms are all seen in training, so "a pentagram" means "a star" to the model: that is
what the synonym attack exploits after an erasure trained only on the canonical name.

Example:
    >>> import numpy as np
    >>> from robust_encoders.miniature.captions import caption
    >>> caption("star", "red", "dots", np.random.default_rng(0))  # doctest: +SKIP
    'a scarlet pentagram on a spotty backdrop'
    >>> prompt_for("star", "red", "dots")
    'a red star on a dotted background'
"""

from __future__ import annotations

import numpy as np

from .concepts import CONCEPTS

__all__ = ["TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "caption", "prompt_for", "concept_prompts"]

# {o} object, {c} colour, {s} style adjective, {b} backdrop noun
TRAIN_TEMPLATES = (
    "a {c} {o} on a {s} {b}",
    "{c} {o}, {s} {b}",
    "a picture of a {c} {o} with a {s} {b}",
    "{s} {b} with a {c} {o}",
    "an image of a {o} in {c} on a {s} {b}",
    "a {o}, colored {c}, {s} {b}",
    "a drawing of a {c} {o} over a {s} {b}",
    "{c} {o} in front of a {s} {b}",
    "the {o} is {c} and the {b} is {s}",
    "a {s} {b} behind a {c} {o}",
)
HELDOUT_TEMPLATES = (
    "a photo showing one {c} {o} against a {s} {b}",
    "on a {s} {b} there is a {c} {o}",
    "i see a {c} {o} and a {s} {b}",
)
# Partial templates: attributes may be omitted, the model then draws any value.
_NO_COLOUR = ("a {o} on a {s} {b}", "{s} {b} with a {o}", "a picture of a {o}, {s} {b}")
_NO_STYLE = ("a {c} {o}", "a picture of a {c} {o}", "{c} {o}")
_ONLY_OBJECT = ("a {o}", "a picture of a {o}", "{o}")
_BACKDROPS = ("background", "backdrop", "pattern", "wall")
_FILLERS = ("", "", "", "simple ", "tiny ", "clean ")


def caption(
    obj: str,
    colour: str,
    style: str,
    rng: np.random.Generator,
    *,
    heldout: bool = False,
    p_drop_colour: float = 0.0,
    p_drop_style: float = 0.0,
) -> str:
    """A random caption of one scene (synonyms, templates, optional dropped attributes)."""
    drop_c = rng.random() < p_drop_colour
    drop_s = rng.random() < p_drop_style
    if drop_c and drop_s:
        pool = _ONLY_OBJECT
    elif drop_c:
        pool = _NO_COLOUR
    elif drop_s:
        pool = _NO_STYLE
    else:
        pool = HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES
    tpl = pool[int(rng.integers(len(pool)))]

    def pick(name: str) -> str:
        syn = CONCEPTS[name].synonyms
        return syn[int(rng.integers(len(syn)))]

    text = tpl.format(o=pick(obj), c=pick(colour), s=pick(style), b=_BACKDROPS[int(rng.integers(len(_BACKDROPS)))])
    return _FILLERS[int(rng.integers(len(_FILLERS)))] + text


def prompt_for(obj: str, colour: str | None = None, style: str | None = None) -> str:
    """The canonical prompt for a scene, using canonical names."""
    o = CONCEPTS[obj].synonyms[0]
    if colour and style:
        return f"a {CONCEPTS[colour].synonyms[0]} {o} on a {CONCEPTS[style].synonyms[0]} background"
    if colour:
        return f"a {CONCEPTS[colour].synonyms[0]} {o}"
    if style:
        return f"a {o} on a {CONCEPTS[style].synonyms[0]} background"
    return f"a {o}"


def concept_prompts(obj: str, colour: str, style: str, rng: np.random.Generator, n: int, heldout_frac: float = 0.25):
    """``n`` varied full captions of one scene, a fraction of them with held-out phrasings."""
    return [caption(obj, colour, style, rng, heldout=(i < round(n * heldout_frac))) for i in range(n)]
