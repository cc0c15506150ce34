"""Forget and retain prompt sets for training.

* Real Stable Diffusion: the concept prompt is the concept's text (AdvUnlearn trains on the
  bare concept word, e.g. ``"nudity"``, ``"Van Gogh"``); retain prompts come from the bundled
  ``data/prompts/retain_sd.txt`` (224 ordinary object / scene prompts) or a user file.
* Miniature world: forget prompts are canonical prompts naming the concept (``"a star"``,
  ``"a red star"``, ``"a star on a dotted background"``, ...); retain prompts are captions from
  the miniature caption generator of scenes *without* the concept, with every caption that
  mentions the concept or one of its synonyms dropped.

Example:
    >>> from robust_encoders.training.prompts import miniature_forget_prompts, miniature_retain_prompts
    >>> miniature_forget_prompts("star")[:3]
    ['a star', 'a red star', 'a green star']
    >>> any("star" in p for p in miniature_retain_prompts("star", n=50, seed=0))
    False
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

__all__ = [
    "PROMPTS_DIR",
    "RETAIN_SD_FILE",
    "read_prompt_file",
    "default_retain_prompts",
    "miniature_forget_prompts",
    "miniature_retain_prompts",
    "mentions",
]

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "data" / "prompts"
RETAIN_SD_FILE = PROMPTS_DIR / "retain_sd.txt"


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a ``.txt`` (one per line, ``#`` comments) or a ``.csv`` with a ``prompt`` column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Prompt file {path} does not exist (expected a .txt with one prompt per line, or a .csv).")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise ValueError(f"{path} has no 'prompt' column (columns: {reader.fieldnames}).")
            prompts = [row["prompt"].strip() for row in reader if row.get("prompt", "").strip()]
    else:
        prompts = [
            ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.lstrip().startswith("#")
        ]
    if not prompts:
        raise ValueError(f"{path} holds no prompts.")
    return prompts


def mentions(prompt: str, words: list[str] | tuple[str, ...]) -> bool:
    """Whether ``prompt`` contains any of ``words`` as whole words (case-insensitive)."""
    low = prompt.lower()
    return any(re.search(r"(?<![a-z])" + re.escape(w.lower()) + r"(?![a-z])", low) for w in words if w)


def default_retain_prompts(exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The bundled real-SD retain prompts, minus any that mention ``exclude`` words."""
    return [p for p in read_prompt_file(RETAIN_SD_FILE) if not mentions(p, exclude)]


def miniature_forget_prompts(concept: str) -> list[str]:
    """Canonical miniature prompts that name ``concept`` (all combinations with the other two attributes)."""
    from ..miniature import COLOURS, OBJECTS, STYLES, get_concept
    from ..miniature.captions import prompt_for

    c = get_concept(concept)
    out: list[str] = []
    if c.kind == "object":
        out.append(prompt_for(c.name))
        out += [prompt_for(c.name, colour=col) for col in COLOURS]
        out += [prompt_for(c.name, style=s) for s in STYLES]
        out += [prompt_for(c.name, col, s) for col in COLOURS for s in STYLES]
    elif c.kind == "colour":
        out += [prompt_for(o, colour=c.name) for o in OBJECTS]
        out += [prompt_for(o, c.name, s) for o in OBJECTS for s in STYLES]
    else:
        out += [prompt_for(o, style=c.name) for o in OBJECTS]
        out += [prompt_for(o, col, c.name) for o in OBJECTS for col in COLOURS]
    return out


def miniature_retain_prompts(concept: str, n: int = 300, seed: int = 0) -> list[str]:
    """``n`` distinct miniature captions of scenes without ``concept``, none mentioning it or a synonym."""
    import numpy as np

    from ..miniature import COLOURS, OBJECTS, STYLES, get_concept
    from ..miniature.captions import caption

    c = get_concept(concept)
    pools = {
        "object": [o for o in OBJECTS if o != c.name or c.kind != "object"],
        "colour": [x for x in COLOURS if x != c.name or c.kind != "colour"],
        "style": [s for s in STYLES if s != c.name or c.kind != "style"],
    }
    words = list(c.synonyms) + [c.name]
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        o = pools["object"][int(rng.integers(len(pools["object"])))]
        col = pools["colour"][int(rng.integers(len(pools["colour"])))]
        s = pools["style"][int(rng.integers(len(pools["style"])))]
        text = caption(o, col, s, rng, p_drop_colour=0.2, p_drop_style=0.2)
        if text in seen or mentions(text, words):
            continue
        seen.add(text)
        out.append(text)
    return out
