"""Finding recipes: ``--recipe PATH`` or ``--concept NAME``.

Recipes live in the repository's ``recipes/`` folder (one YAML per concept, each headed by the
command that runs it). ``--concept star`` resolves to ``miniature_star.yaml`` (or to
``miniature_default.yaml`` with ``concept.name=star`` for a miniature concept without its own
file); ``--concept vangogh`` resolves to ``vangogh.yaml``. Set ``ROBUST_ENCODERS_RECIPES`` to
use another folder.

Example:
    >>> from robust_encoders.training.recipes import resolve_concept
    >>> path, overrides = resolve_concept("Star")
    >>> path.name, overrides
    ('miniature_star.yaml', [])
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from .config import ConfigError

__all__ = ["REAL_CONCEPTS", "UnknownConceptError", "recipes_dir", "list_recipes", "resolve_concept", "normalize_concept"]

REAL_CONCEPTS = ("nudity", "vangogh", "church", "garbage_truck", "parachute", "tench")
_ALIASES = {"van_gogh": "vangogh", "nsfw": "nudity", "nude": "nudity", "garbagetruck": "garbage_truck"}


class UnknownConceptError(ConfigError, KeyError):
    """No recipe exists for the requested concept."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def recipes_dir() -> Path:
    """The recipes folder: ``$ROBUST_ENCODERS_RECIPES``, the repository's ``recipes/``, or ``./recipes``."""
    env = os.environ.get("ROBUST_ENCODERS_RECIPES")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[3] / "recipes", Path.cwd() / "recipes"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.yaml")):
            return c
    raise FileNotFoundError(
        "No recipes folder found (looked in: " + ", ".join(map(str, candidates)) + "). Pass --recipe PATH, "
        "or set ROBUST_ENCODERS_RECIPES to the folder holding the recipe YAML files."
    )


def list_recipes() -> list[str]:
    """Recipe names (file stems) available in :func:`recipes_dir`."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def normalize_concept(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(key, key)


def resolve_concept(name: str) -> tuple[Path, list[str]]:
    """(recipe path, overrides) for a concept name (miniature or real)."""
    from ..miniature import CONCEPTS, get_concept

    folder = recipes_dir()
    key = normalize_concept(name)
    if (folder / f"{key}.yaml").is_file() and key in REAL_CONCEPTS:
        return folder / f"{key}.yaml", []
    try:
        mini = get_concept(name).name
    except KeyError:
        mini = None
    if mini is not None:
        own = folder / f"miniature_{mini}.yaml"
        if own.is_file():
            return own, []
        return folder / "miniature_default.yaml", [f"concept.name={mini}", f"recipe=miniature_{mini}"]
    if (folder / f"{key}.yaml").is_file():
        return folder / f"{key}.yaml", []
    known = list(REAL_CONCEPTS) + list(CONCEPTS)
    close = difflib.get_close_matches(key, known, n=3)
    raise UnknownConceptError(
        f"Unknown concept {name!r}. Real Stable Diffusion concepts: {', '.join(REAL_CONCEPTS)}; miniature concepts: "
        f"{', '.join(CONCEPTS)}." + (f" Did you mean: {', '.join(close)}?" if close else "")
        + " For anything else write a recipe (copy one from recipes/) and pass --recipe PATH."
    )
