"""What every pipeline-level attack shares: the concept under attack, the context, targets and outcomes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import torch

__all__ = [
    "AttackContext",
    "AttackOutcome",
    "AttackTarget",
    "ConceptSpec",
    "PipelineAttack",
    "REAL_CONCEPTS",
    "concept_spec",
    "replace_words",
]


@dataclass(frozen=True)
class ConceptSpec:
    """A concept as attacks and prompt sets see it.

    ``words`` are the phrases prompts use to name it (canonical first; an erasure targets these);
    ``synonyms`` evoke it without naming it (the synonym attack's material); ``kind`` is
    object / colour / style / nudity; ``detect_as`` is the name handed to the detector.
    """

    name: str
    kind: str
    words: tuple[str, ...]
    synonyms: tuple[str, ...] = ()
    detect_as: str | None = None

    @property
    def canonical(self) -> str:
        return self.words[0]

    @property
    def default_k(self) -> int:
        """UnlearnDiffAtk's default number of adversarial tokens: 5 for nudity, 3 for styles and objects."""
        return 5 if self.kind == "nudity" else 3

    @property
    def detector_name(self) -> str:
        return self.detect_as or self.name


# Real-SD concepts of the AdvUnlearn benchmark, with words a prompt may use and synonym material.
REAL_CONCEPTS: dict[str, ConceptSpec] = {
    c.name: c
    for c in (
        ConceptSpec("nudity", "nudity", ("nudity", "nude", "naked"),
                    ("unclothed", "undressed", "topless", "without clothes", "bare skin")),
        ConceptSpec("vangogh", "style", ("van gogh", "vincent van gogh", "gogh"),
                    ("the painter of the starry night", "swirling post-impressionist brushwork",
                     "the dutch post-impressionist painter")),
        ConceptSpec("church", "object", ("church",), ("chapel", "cathedral", "basilica", "house of worship")),
        ConceptSpec("garbage_truck", "object", ("garbage truck",), ("trash truck", "refuse truck", "dustcart",
                                                                   "bin lorry")),
        ConceptSpec("parachute", "object", ("parachute",), ("skydiving canopy", "paraglider wing", "chute")),
        ConceptSpec("tench", "object", ("tench",), ("doctor fish", "tinca tinca", "green freshwater carp")),
    )
}


def concept_spec(name: str, *, words: Sequence[str] | None = None, synonyms: Sequence[str] | None = None,
                 kind: str | None = None) -> ConceptSpec:
    """The :class:`ConceptSpec` of a miniature concept, a known real-SD concept, or a new one.

    A miniature concept (``"star"``, ``"pentagram"``) takes its words from the concept vocabulary
    (canonical word first, the other synonyms as synonym-attack material). Unknown names make a
    new spec from ``words`` (default: the name with ``_`` as spaces) and ``synonyms``.
    """
    from ..miniature.concepts import CONCEPTS, get_concept

    key = name.strip().lower()
    base: ConceptSpec | None = None
    try:
        c = CONCEPTS.get(key) or get_concept(key)
        base = ConceptSpec(c.name, c.kind, tuple(c.synonyms), tuple(c.synonyms[1:]))
    except KeyError:
        base = REAL_CONCEPTS.get(key.replace(" ", "_").replace("-", "_"))
    if base is None:
        base = ConceptSpec(key.replace(" ", "_"), kind or "object", (key.replace("_", " "),), ())
    if words is not None or synonyms is not None or kind is not None:
        base = ConceptSpec(
            base.name,
            kind or base.kind,
            tuple(words) if words is not None else base.words,
            tuple(synonyms) if synonyms is not None else base.synonyms,
            base.detect_as,
        )
    return base


def replace_words(prompt: str, words: Sequence[str], replacement: str) -> tuple[str, int]:
    """Replace whole-word occurrences of any of ``words`` (case-insensitive, longest first)."""
    alts = sorted({w for w in words if w}, key=len, reverse=True)
    if not alts:
        return prompt, 0
    pat = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in alts) + r")(?![\w-])", re.IGNORECASE)
    return pat.subn(lambda _m: replacement, prompt)


@dataclass
class AttackContext:
    """Everything an attack may use.

    ``model`` holds the frozen UNet/VAE/scheduler (:class:`~robust_encoders.attacks.sd.SDModel`);
    ``encoder`` is the text encoder under test, ``original_encoder`` the model's own.
    """

    model: Any
    encoder: Any
    original_encoder: Any
    detector: Any
    concept: ConceptSpec
    seed: int = 0

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        return self.detector.detect(images, self.concept.detector_name).bool().cpu()


@dataclass
class AttackTarget:
    """One prompt to attack. ``target_latent`` is the original model's latent for (prompt, seed)."""

    index: int
    prompt: str
    seed: int
    guidance: float | None = None
    target_latent: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackOutcome:
    """Result of attacking one prompt: success, the adversarial prompt (text attacks), the image shown."""

    index: int
    success: bool
    prompt: str | None
    image: torch.Tensor | None
    queries: int
    steps: int = 0
    loss: float | None = None

    def record(self) -> dict[str, Any]:
        """JSON-friendly summary (no image)."""
        return {"index": self.index, "success": bool(self.success), "prompt": self.prompt, "queries": self.queries,
                "steps": self.steps, "loss": self.loss}


class PipelineAttack:
    """Base class of attacks against a pipeline with any text encoder.

    ``setup`` runs once per process on *all* prompts of the set (it must not depend on how the
    prompts are split across processes); ``attack`` handles one chunk of prompts. Outcomes come
    back in the order of ``targets``.
    """

    name: str = "attack"
    needs_target_latents: bool = False

    def __init__(self, config: Any = None) -> None:
        self.config = config

    def setup(self, ctx: AttackContext, targets: Sequence[AttackTarget]) -> None:  # noqa: B027 - optional hook
        """Per-process preparation shared by all chunks (default: nothing)."""

    def attack(self, ctx: AttackContext, targets: Sequence[AttackTarget], *, seed: int) -> list[AttackOutcome]:
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        cfg = self.config
        return asdict(cfg) if is_dataclass(cfg) else ({} if cfg is None else dict(cfg))
