"""Choose which part of a CLIP text encoder learns: all layers, the first k, attention, MLP, or LoRA.

Works with transformers 4 (``CLIPTextModel.text_model.encoder.layers``) and 5 (no
``text_model`` attribute; ``encoder.layers`` at the top). Token and position embeddings stay
frozen unless ``train_embeddings`` is set, as in AdvUnlearn.

Example:
    >>> from transformers import CLIPTextConfig, CLIPTextModel
    >>> from robust_encoders.training.config import TrainableConfig
    >>> from robust_encoders.training.trainable import make_trainable
    >>> enc = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=3, num_attention_heads=4))
    >>> model, params = make_trainable(enc, TrainableConfig(part="first_k", layers=1))
    >>> sorted({n.split(".")[2] for n in params})
    ['0']
"""

from __future__ import annotations

import copy
import difflib

import torch

from .config import TrainableConfig

__all__ = [
    "LoraTargetError", "text_transformer", "make_trainable", "trainable_state_dict", "linear_module_names",
    "frozen_parameter_names", "copy_sharing_frozen",
]


class LoraTargetError(ValueError):
    """A LoRA target names no module of the text encoder."""


def text_transformer(text_encoder) -> torch.nn.Module:
    """The module holding ``embeddings``, ``encoder`` and ``final_layer_norm``."""
    return getattr(text_encoder, "text_model", text_encoder)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct leaf names of the ``nn.Linear`` modules (what LoRA ``targets`` may name)."""
    return sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def _select(text_encoder, cfg: TrainableConfig) -> list[str]:
    tm = text_transformer(text_encoder)
    prefix = "" if tm is text_encoder else "text_model."
    layers = tm.encoder.layers
    names: list[str] = []
    for n, _ in text_encoder.named_parameters():
        rel = n[len(prefix):] if n.startswith(prefix) else n
        is_emb = rel.startswith("embeddings.")
        if is_emb:
            if cfg.train_embeddings:
                names.append(n)
            continue
        if cfg.part == "all":
            names.append(n)
            continue
        if not rel.startswith("encoder.layers."):
            continue
        idx = int(rel.split(".")[2])
        if cfg.part == "first_k":
            if cfg.layers > len(layers):
                raise ValueError(
                    f"trainable.layers={cfg.layers} but the text encoder has only {len(layers)} layers; "
                    f"use 1..{len(layers)} or part=all."
                )
            if idx < cfg.layers:
                names.append(n)
        elif cfg.part == "attention" and ".self_attn." in rel:
            names.append(n)
        elif cfg.part == "mlp" and ".mlp." in rel:
            names.append(n)
    return names


def _is_embedding(name: str) -> bool:
    return ".embeddings." in name or name.startswith("embeddings.")


def frozen_parameter_names(text_encoder, cfg: TrainableConfig) -> set[str]:
    """Names of the parameters :func:`make_trainable` will leave frozen, worked out without changing anything (for
    LoRA: every base weight, the embeddings too unless ``train_embeddings``)."""
    names = [n for n, _ in text_encoder.named_parameters()]
    if cfg.part == "lora":
        trainable = {n for n in names if _is_embedding(n)} if cfg.train_embeddings else set()
    else:
        trainable = set(_select(text_encoder, cfg))
    return {n for n in names if n not in trainable}


def copy_sharing_frozen(text_encoder: torch.nn.Module, cfg: TrainableConfig) -> torch.nn.Module:
    """A copy of ``text_encoder`` that owns only the tensors ``cfg`` trains: every parameter that stays frozen is the
    original's own (the same ``Parameter``), so the copy costs the trainable part alone (on CLIP, the 49,408-token
    embedding table, 38M parameters at SD size, is never duplicated). Neither side may then be cast or moved
    (``.to()`` would convert the shared tensors in place): make the copy on the device and in the dtype it will run
    in. :func:`make_trainable` on the copy also clears ``requires_grad`` of the shared tensors on the original.

    Example:
        >>> from transformers import CLIPTextConfig, CLIPTextModel
        >>> from robust_encoders.training.config import TrainableConfig
        >>> enc = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=2, num_attention_heads=4))
        >>> twin = copy_sharing_frozen(enc, TrainableConfig(part="first_k", layers=1))
        >>> twin.get_input_embeddings().weight is enc.get_input_embeddings().weight
        True
        >>> twin.encoder.layers[0].mlp.fc1.weight is enc.encoder.layers[0].mlp.fc1.weight
        False
    """
    frozen = frozen_parameter_names(text_encoder, cfg)
    memo = {id(p): p for n, p in text_encoder.named_parameters() if n in frozen}
    return copy.deepcopy(text_encoder, memo)


def make_trainable(text_encoder, cfg: TrainableConfig) -> tuple[torch.nn.Module, list[str]]:
    """Freeze everything but the chosen part; returns (model to train, names of trainable params).

    For ``part='lora'`` the model is a peft ``PeftModel`` around ``text_encoder`` (adapter
    ``default``); otherwise it is ``text_encoder`` itself.
    """
    for p in text_encoder.parameters():
        p.requires_grad_(False)
    if cfg.part != "lora":
        names = _select(text_encoder, cfg)
        params = dict(text_encoder.named_parameters())
        for n in names:
            params[n].requires_grad_(True)
        if not names:
            raise ValueError(f"trainable.part={cfg.part!r} selects no parameter of this text encoder.")
        return text_encoder, names

    from peft import LoraConfig, get_peft_model

    available = linear_module_names(text_encoder)
    missing = [t for t in cfg.lora.targets if t not in available]
    if missing:
        hints = []
        for t in missing:
            close = difflib.get_close_matches(t, available, n=1)
            hints.append(f"{t!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise LoraTargetError(
            f"LoRA target(s) {', '.join(hints)} match no Linear module of {type(text_encoder).__name__}. "
            f"Available targets: {', '.join(available)}."
        )
    lcfg = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.targets),
        bias="none",
        init_lora_weights=True,
    )
    model = get_peft_model(text_encoder, lcfg)
    if cfg.train_embeddings:
        for n, p in model.named_parameters():
            if _is_embedding(n):
                p.requires_grad_(True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return model, names


def trainable_state_dict(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The trainable tensors by name (detached, contiguous, on CPU) for checkpoints."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu").contiguous().clone() for n in names}
