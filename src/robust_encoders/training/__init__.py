"""Training robust concept-erased text encoders (the AdvUnlearn recipe, engineered).

Example:
    >>> from robust_encoders.training import load_recipe
    >>> from robust_encoders.training.recipes import resolve_concept
    >>> cfg = load_recipe(resolve_concept("star")[0], ["attack.steps=5"])
    >>> cfg.concept.name, cfg.model.base_model, cfg.attack.steps
    ('star', 'miniature', 5)

Train with :func:`train` (Python) or ``robust-encoders train`` (CLI). The run folder holds
``config.yaml``, ``robust_encoder.json``, ``text_encoder/`` (a full ``CLIPTextModel`` or a peft
LoRA adapter), ``log.jsonl`` and ``checkpoints/``.
"""

from __future__ import annotations

from .._lazy import attach
from .config import (
    AttackSettings,
    CheckpointConfig,
    ConceptConfig,
    ConfigError,
    EngineConfig,
    LogConfig,
    LoraSettings,
    ModelConfig,
    OptimConfig,
    RetainConfig,
    SamplingConfig,
    TrainableConfig,
    TrainConfig,
    UnlearnConfig,
    apply_overrides,
    config_help,
    load_recipe,
)
from .recipes import REAL_CONCEPTS, UnknownConceptError, list_recipes, recipes_dir, resolve_concept

# public name -> submodule that defines it (imported on first use, so `robust-encoders --help` stays instant)
_LAZY = {
    "LoraTargetError": ".trainable",
    "make_trainable": ".trainable",
    "BaseModelUnavailableError": ".trainer",
    "RunDirError": ".trainer",
    "Trainer": ".trainer",
    "resolve_config": ".trainer",
    "run_differences": ".trainer",
    "train": ".trainer",
}

__all__ = [
    "AttackSettings",
    "BaseModelUnavailableError",
    "CheckpointConfig",
    "ConceptConfig",
    "ConfigError",
    "EngineConfig",
    "LogConfig",
    "LoraSettings",
    "LoraTargetError",
    "ModelConfig",
    "OptimConfig",
    "REAL_CONCEPTS",
    "RetainConfig",
    "RunDirError",
    "SamplingConfig",
    "TrainConfig",
    "TrainableConfig",
    "Trainer",
    "UnknownConceptError",
    "UnlearnConfig",
    "apply_overrides",
    "config_help",
    "list_recipes",
    "load_recipe",
    "make_trainable",
    "recipes_dir",
    "resolve_concept",
    "resolve_config",
    "run_differences",
    "train",
]

__getattr__, __dir__ = attach(__name__, _LAZY, __all__)
