"""The evaluation suite: red-team a text encoder and measure what it still draws.

Example:
    >>> from robust_encoders.evaluation import EvalConfig
    >>> EvalConfig(concept="star").attacks[0]
    'unlearndiffatk'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

if TYPE_CHECKING:  # static analysers see the real imports; at run time they load on first use
    from .evaluate import (  # noqa: F401
        ALL_ATTACKS,
        RESULT_KEYS,
        EvalConfig,
        EvalResult,
        evaluate_encoder,
    )
    from .loading import (  # noqa: F401
        load_encoder_for_eval,
    )
    from .metrics import (  # noqa: F401
        ClipScorer,
        attack_success_rate,
        frechet_distance,
        retain_accuracy,
        wilson_interval,
    )
    from .prompts import (  # noqa: F401
        PromptItem,
        load_prompt_csv,
        miniature_forget_prompts,
        miniature_retain_prompts,
    )
    from .report import (  # noqa: F401
        markdown_table,
        save_grid,
    )

_EXPORTS: dict[str, str] = {
    "ALL_ATTACKS": ".evaluate",
    "RESULT_KEYS": ".evaluate",
    "EvalConfig": ".evaluate",
    "EvalResult": ".evaluate",
    "evaluate_encoder": ".evaluate",
    "load_encoder_for_eval": ".loading",
    "ClipScorer": ".metrics",
    "attack_success_rate": ".metrics",
    "frechet_distance": ".metrics",
    "retain_accuracy": ".metrics",
    "wilson_interval": ".metrics",
    "PromptItem": ".prompts",
    "load_prompt_csv": ".prompts",
    "miniature_forget_prompts": ".prompts",
    "miniature_retain_prompts": ".prompts",
    "markdown_table": ".report",
    "save_grid": ".report",
}

__all__ = [
    "ALL_ATTACKS",
    "ClipScorer",
    "EvalConfig",
    "EvalResult",
    "PromptItem",
    "RESULT_KEYS",
    "attack_success_rate",
    "evaluate_encoder",
    "frechet_distance",
    "load_encoder_for_eval",
    "load_prompt_csv",
    "markdown_table",
    "miniature_forget_prompts",
    "miniature_retain_prompts",
    "retain_accuracy",
    "save_grid",
    "wilson_interval",
]


__getattr__, __dir__ = attach(__name__, _EXPORTS, __all__)
