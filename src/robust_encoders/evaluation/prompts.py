"""Prompt sets: generated forget/retain sets for the miniature world, CSV files for real SD.

A prompt set is a list of :class:`PromptItem` (prompt, evaluation seed, guidance, the labels a
detector should find, and metadata attacks may use). Every item carries its own seed, so an
image depends only on its item, never on batching or on how items are split across processes.

* :func:`miniature_forget_prompts` - scenes *with* the concept, named by its canonical word,
  in training and held-out phrasings; each item carries held-out paraphrases with a
  ``{concept}`` slot for the synonym attack.
* :func:`miniature_retain_prompts` - scenes *without* the concept (other values of its kind).
* :func:`load_prompt_csv` - UnlearnDiffAtk / I2P format: ``prompt``, ``evaluation_seed``,
  ``evaluation_guidance`` (+ any other columns, kept as metadata; ``label``/``class`` become the
  expected detector class for retain accuracy).

Example:
    >>> from robust_encoders.evaluation.prompts import miniature_forget_prompts
    >>> items = miniature_forget_prompts("star", n=4, seed=0)
    >>> all("star" in it.prompt for it in items), items[0].labels["object"]
    (True, 'star')
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PromptItem",
    "load_prompt_csv",
    "miniature_forget_prompts",
    "miniature_retain_prompts",
]

_BACKDROPS = ("background", "backdrop", "pattern", "wall")


@dataclass(frozen=True)
class PromptItem:
    """One evaluation prompt.

    ``labels`` maps detector head -> expected class name (used by retain accuracy);
    ``meta`` holds anything else (scene attributes, held-out ``paraphrases``, CSV columns).
    """

    prompt: str
    seed: int
    guidance: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "seed": self.seed, "guidance": self.guidance, "labels": dict(self.labels)}


def _render(template: str, words: dict[str, str], backdrop: str) -> str:
    return template.format(o=words["object"], c=words["colour"], s=words["style"], b=backdrop)


def _scenes(concept: str, n: int, rng: np.random.Generator, *, include: bool):
    from ..miniature.concepts import CONCEPTS, concepts_of_kind

    c = CONCEPTS[concept]
    kinds = ("object", "colour", "style")
    for _ in range(n):
        scene = {}
        for k in kinds:
            values = concepts_of_kind(k)
            if k == c.kind:
                values = (c.name,) if include else tuple(v for v in values if v != c.name)
            scene[k] = values[int(rng.integers(len(values)))]
        yield scene


def _items(concept: str, n: int, seed: int, heldout_frac: float, include: bool) -> list[PromptItem]:
    from ..miniature.captions import HELDOUT_TEMPLATES, TRAIN_TEMPLATES
    from ..miniature.concepts import CONCEPTS, get_concept

    concept = get_concept(concept).name
    if n < 1:
        raise ValueError(f"A prompt set needs n >= 1 prompts, got {n}.")
    if not 0 <= heldout_frac <= 1:
        raise ValueError(f"heldout_frac must lie in [0, 1], got {heldout_frac}.")
    rng = np.random.default_rng([seed, 1 if include else 2])
    kind = CONCEPTS[concept].kind
    n_held = round(n * heldout_frac)
    items = []
    for i, scene in enumerate(_scenes(concept, n, rng, include=include)):
        words = {k: CONCEPTS[v].synonyms[0] for k, v in scene.items()}
        held = i < n_held
        pool = HELDOUT_TEMPLATES if held else TRAIN_TEMPLATES
        tpl = pool[int(rng.integers(len(pool)))]
        backdrop = _BACKDROPS[int(rng.integers(len(_BACKDROPS)))]
        slot = {"object": "o", "colour": "c", "style": "s"}[kind]
        paraphrases = []
        for t in HELDOUT_TEMPLATES:
            if t != tpl:
                escaped = t.replace("{" + slot + "}", "{{concept}}")
                paraphrases.append(_render(escaped, words, backdrop))
        items.append(
            PromptItem(
                prompt=_render(tpl, words, backdrop),
                seed=int(rng.integers(2**31 - 1)),
                guidance=None,
                labels=dict(scene),
                meta={"template": tpl, "heldout": held, "backdrop": backdrop, "paraphrases": paraphrases},
            )
        )
    return items


def miniature_forget_prompts(concept: str, n: int = 24, seed: int = 0, heldout_frac: float = 0.5) -> list[PromptItem]:
    """``n`` prompts of miniature scenes that contain ``concept``, named by its canonical word.

    A fraction ``heldout_frac`` uses phrasings never seen in training (generalisation check).
    """
    return _items(concept, n, seed, heldout_frac, include=True)


def miniature_retain_prompts(concept: str, n: int = 24, seed: int = 0, heldout_frac: float = 0.25) -> list[PromptItem]:
    """``n`` prompts of miniature scenes *without* ``concept`` (other values of its kind)."""
    return _items(concept, n, seed, heldout_frac, include=False)


_SEED_COLUMNS = ("evaluation_seed", "sd_seed", "seed")
_GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance_scale", "guidance", "guidance_scale")
_LABEL_COLUMNS = ("label", "class", "class_name")


def load_prompt_csv(
    path: str | os.PathLike,
    *,
    limit: int | None = None,
    default_seed: int = 0,
    default_guidance: float | None = None,
    label_head: str = "class",
) -> list[PromptItem]:
    """Prompts from a CSV in the UnlearnDiffAtk / I2P format.

    Required column: ``prompt``. Optional: ``evaluation_seed`` (or ``sd_seed``/``seed``; default
    ``default_seed + row``), ``evaluation_guidance`` (or ``sd_guidance_scale``/``guidance``),
    ``label``/``class`` (expected detector class under head ``label_head``, for retain accuracy).
    Other columns (``case_number``, ``categories``, ...) are kept in ``meta``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Prompt file {path} does not exist.")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "prompt" not in cols:
            raise ValueError(
                f"{path} has no 'prompt' column (columns: {', '.join(cols) or 'none'}). Expected the "
                "UnlearnDiffAtk / I2P format: prompt, evaluation_seed, evaluation_guidance, ..."
            )
        items = []
        for row_no, raw in enumerate(reader):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if not row.get("prompt"):
                continue
            seed_col = next((c for c in _SEED_COLUMNS if row.get(c)), None)
            guid_col = next((c for c in _GUIDANCE_COLUMNS if row.get(c)), None)
            label_col = next((c for c in _LABEL_COLUMNS if row.get(c)), None)
            try:
                seed = int(float(row[seed_col])) if seed_col else default_seed + row_no
                guidance = float(row[guid_col]) if guid_col else default_guidance
            except ValueError as e:
                raise ValueError(f"{path}, data row {row_no + 1}: bad seed/guidance value ({e}).") from e
            labels = {label_head: row[label_col]} if label_col else {}
            meta = {k: v for k, v in row.items() if k not in ("prompt", seed_col, guid_col, label_col)}
            items.append(PromptItem(row["prompt"], seed, guidance, labels, meta))
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise ValueError(f"{path} holds no prompts.")
    return items
