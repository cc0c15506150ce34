"""Adversarial attacks on concept-erased text encoders, shared by the trainer and the evaluation suite.

* :class:`PromptAttack` is the text-encoder-level primitive (continuous soft tokens or discrete
  real tokens minimising any loss of the encoder output); the trainer's inner attack.
* The pipeline attacks (:class:`UnlearnDiffAtk`, :class:`SoftPromptAttack`, :class:`RingABell`,
  :class:`SynonymAttack`, :class:`ConceptInversion`) try to make a Stable Diffusion pipeline with
  any text encoder draw an erased concept, and check success by generating and detecting.

Example:
    >>> from robust_encoders.attacks import PromptAttackConfig
    >>> PromptAttackConfig(mode="discrete", k=5).position
    'prefix'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

if TYPE_CHECKING:  # static analysers see the real imports; at run time they load on first use
    from .base import (  # noqa: F401
        REAL_CONCEPTS,
        AttackContext,
        AttackOutcome,
        AttackTarget,
        ConceptSpec,
        PipelineAttack,
        concept_spec,
        replace_words,
    )
    from .pipeline_attacks import (  # noqa: F401
        ATTACKS,
        ConceptInversion,
        ConceptInversionConfig,
        DenoiseLoss,
        RingABell,
        RingABellConfig,
        SoftPromptAttack,
        SoftPromptConfig,
        SynonymAttack,
        SynonymConfig,
        UnlearnDiffAtk,
        UnlearnDiffAtkConfig,
        build_attack,
    )
    from .prompt_attack import (  # noqa: F401
        AttackResult,
        AttackState,
        PromptAttack,
        PromptAttackConfig,
        VocabHull,
        project_to_simplex,
    )
    from .sd import (  # noqa: F401
        Generation,
        SDModel,
    )
    from .token_search import (  # noqa: F401
        RowLoss,
        TokenSearch,
        TokenSearchConfig,
    )
    from .tokens import (  # noqa: F401
        decode_ids,
        safe_token_ids,
    )

_EXPORTS: dict[str, str] = {
    "REAL_CONCEPTS": ".base",
    "AttackContext": ".base",
    "AttackOutcome": ".base",
    "AttackTarget": ".base",
    "ConceptSpec": ".base",
    "PipelineAttack": ".base",
    "concept_spec": ".base",
    "replace_words": ".base",
    "ATTACKS": ".pipeline_attacks",
    "DenoiseLoss": ".pipeline_attacks",
    "RowLoss": ".token_search",
    "TokenSearch": ".token_search",
    "TokenSearchConfig": ".token_search",
    "ConceptInversion": ".pipeline_attacks",
    "ConceptInversionConfig": ".pipeline_attacks",
    "RingABell": ".pipeline_attacks",
    "RingABellConfig": ".pipeline_attacks",
    "SoftPromptAttack": ".pipeline_attacks",
    "SoftPromptConfig": ".pipeline_attacks",
    "SynonymAttack": ".pipeline_attacks",
    "SynonymConfig": ".pipeline_attacks",
    "UnlearnDiffAtk": ".pipeline_attacks",
    "UnlearnDiffAtkConfig": ".pipeline_attacks",
    "build_attack": ".pipeline_attacks",
    "AttackResult": ".prompt_attack",
    "AttackState": ".prompt_attack",
    "PromptAttack": ".prompt_attack",
    "PromptAttackConfig": ".prompt_attack",
    "project_to_simplex": ".prompt_attack",
    "VocabHull": ".prompt_attack",
    "Generation": ".sd",
    "SDModel": ".sd",
    "decode_ids": ".tokens",
    "safe_token_ids": ".tokens",
}

__all__ = [
    "ATTACKS",
    "AttackContext",
    "AttackOutcome",
    "AttackResult",
    "AttackState",
    "AttackTarget",
    "ConceptInversion",
    "ConceptInversionConfig",
    "ConceptSpec",
    "DenoiseLoss",
    "Generation",
    "PipelineAttack",
    "PromptAttack",
    "PromptAttackConfig",
    "REAL_CONCEPTS",
    "RingABell",
    "RingABellConfig",
    "RowLoss",
    "SDModel",
    "SoftPromptAttack",
    "SoftPromptConfig",
    "SynonymAttack",
    "SynonymConfig",
    "TokenSearch",
    "TokenSearchConfig",
    "UnlearnDiffAtk",
    "UnlearnDiffAtkConfig",
    "VocabHull",
    "build_attack",
    "concept_spec",
    "decode_ids",
    "project_to_simplex",
    "replace_words",
    "safe_token_ids",
]


__getattr__, __dir__ = attach(__name__, _EXPORTS, __all__)
