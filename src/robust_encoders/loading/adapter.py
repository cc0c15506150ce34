"""Applying peft LoRA adapters to a base text encoder — loudly, never as a silent no-op.

transformers 5 removed the ``text_model.`` level from ``CLIPTextModel``; adapters trained before that have
keys such as ``base_model.model.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight`` and (sometimes)
``target_modules`` written against the old module names. peft would load such an adapter onto nothing and
only warn; here legacy names are mapped onto the current layout, and any adapter whose weights still do not
line up with the modules peft created raises :class:`CheckpointMismatchError`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import read_weights_file
from .errors import CheckpointMismatchError

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = ["ADAPTER_BIN", "ADAPTER_SAFETENSORS", "adapter_weights_file", "apply_adapter", "read_adapter_config"]

ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
_PEFT_PREFIX = "base_model.model."


def adapter_weights_file(folder: Path) -> Path | None:
    for name in (ADAPTER_SAFETENSORS, ADAPTER_BIN):
        if (folder / name).is_file():
            return folder / name
    return None


def read_adapter_config(folder: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointMismatchError(f"cannot read {folder / 'adapter_config.json'}: {exc}") from exc


def _uses_text_model_level(model: torch.nn.Module) -> bool:
    return any(name == "text_model" for name, _ in model.named_children())


def _canonical_adapter_key(key: str, *, has_level: bool, module_names: set[str]) -> str:
    key = key.removeprefix(_PEFT_PREFIX)
    for prefix in ("text_encoder.", "module."):
        key = key.removeprefix(prefix)
    key = re.sub(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)\.default(\.|$)", r".\1\2", key)
    if not has_level:
        key = key.removeprefix("text_model.")
    elif not key.startswith("text_model."):
        owner = key.split(".lora_")[0]
        if owner not in module_names and f"text_model.{owner}" in module_names:
            key = f"text_model.{key}"
    return _PEFT_PREFIX + key


def _remap_targets(targets: Any, module_names: list[str]) -> Any:
    """Rewrite ``target_modules`` written for the legacy ``text_model.*`` layout onto current module names."""
    if targets is None:
        return None
    if isinstance(targets, str):
        if targets == "all-linear":
            return targets
        try:
            rx = re.compile(targets)
        except re.error:
            return targets
        if any(rx.fullmatch(n) for n in module_names):
            return targets
        legacy_hits = [n for n in module_names if n and rx.fullmatch(f"text_model.{n}")]
        return set(legacy_hits) if legacy_hits else targets
    return {t.removeprefix("text_model.") for t in targets}


def apply_adapter(
    base: torch.nn.Module, folder: Path, *, merge: bool = True, source: str | None = None
) -> torch.nn.Module | PeftModel:
    """Apply the peft adapter in ``folder`` to ``base`` (modified in place) and return the merged model,
    or the ``PeftModel`` when ``merge`` is false.

    Raises:
        CheckpointMismatchError: the adapter targets modules that ``base`` lacks, or its weights (after legacy
            key mapping) do not fill exactly the adapter parameters peft created — which would otherwise be a
            silent no-op.
    """
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    source = source or str(folder)
    weights = adapter_weights_file(folder)
    if weights is None:
        raise CheckpointMismatchError(
            f"{source} has adapter_config.json but no adapter weights ({ADAPTER_SAFETENSORS} or {ADAPTER_BIN})"
        )
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise CheckpointMismatchError(f"{source}: adapter_config.json is not a valid peft config: {exc}") from exc
    raw, _ = read_weights_file(weights)

    has_level = _uses_text_model_level(base)
    module_names = [n for n, _ in base.named_modules()]
    name_set = set(module_names)
    state = {_canonical_adapter_key(k, has_level=has_level, module_names=name_set): v for k, v in raw.items()}
    if not has_level:
        config.target_modules = _remap_targets(config.target_modules, module_names)
        if getattr(config, "modules_to_save", None):
            config.modules_to_save = [m.removeprefix("text_model.") for m in config.modules_to_save]
    config.inference_mode = True

    try:
        with warnings.catch_warnings():
            # peft notes that the (unnamed) in-memory base differs from base_model_name_or_path; we chose the base
            warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(base, config)
    except ValueError as exc:
        raise CheckpointMismatchError(
            f"The adapter in {source} does not fit its base {type(base).__name__}: its target_modules "
            f"{sorted(config.target_modules) if isinstance(config.target_modules, set) else config.target_modules!r} "
            f"match no module there. Pass the base encoder it was trained on as base_model=... . peft said: {exc}"
        ) from exc

    expected = set(get_peft_model_state_dict(peft_model).keys())
    provided = set(state)
    matched = provided & expected
    if not matched:
        raise CheckpointMismatchError(
            f"The adapter weights in {source} match no module of the base {type(base).__name__}: loading it "
            f"would be a silent no-op. Adapter keys look like {sorted(provided)[:2]}, the model expects keys like "
            f"{sorted(expected)[:2]}. Is base_model the encoder this adapter was trained on?"
        )
    unexpected, missing = sorted(provided - expected), sorted(expected - provided)
    if unexpected or missing:
        raise CheckpointMismatchError(
            f"The adapter weights in {source} only partly fit the base {type(base).__name__}: "
            f"{len(unexpected)} key(s) match no adapter parameter (e.g. {unexpected[:2]}), "
            f"{len(missing)} adapter parameter(s) get no weights (e.g. {missing[:2]}). Refusing to apply a "
            "partial adapter."
        )
    try:
        set_peft_model_state_dict(peft_model, state)
    except RuntimeError as exc:  # size mismatch
        raise CheckpointMismatchError(f"The adapter weights in {source} have the wrong shapes: {exc}") from exc
    peft_model.eval()
    if merge:
        return peft_model.merge_and_unload()
    return peft_model
