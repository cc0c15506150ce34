"""Convert legacy ``pytorch_model.bin`` text encoders (e.g. the public AdvUnlearn release) to safetensors.

The pickle is read **only** with ``torch.load(weights_only=True)`` (through the loader's
:func:`robust_encoders.loading.checkpoint.safe_torch_load`): a file whose pickle references anything but tensors
and plain containers — for example a payload that would run code — is refused with
:class:`~robust_encoders.loading.errors.UnsafeCheckpointError` and nothing in it is executed.

Keys are mapped onto the current transformers layout (transformers 4 ``text_model.*`` names, ``module.`` /
``cond_stage_model.transformer.`` wrappers, the old ``position_ids`` buffer), the weights are checked against the
config (shapes, missing or unexpected keys), and the result is written with ``save_pretrained`` as
``config.json`` + ``model.safetensors``, atomically (temporary folder, then rename).

Example:
    >>> from robust_encoders.hub import convert_legacy_bin
    >>> convert_legacy_bin("AdvUnlearn/nudity_unlearned", "encoders/nudity")   # doctest: +SKIP
    PosixPath('encoders/nudity')
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["KNOWN_TEXT_TOWERS", "convert_legacy_bin", "infer_text_config"]

logger = logging.getLogger(__name__)

#: Hidden size -> the settings shapes cannot reveal, for the text towers Stable Diffusion uses
#: (OpenAI CLIP ViT-L/14 for SD 1.x, OpenCLIP ViT-H/14 for SD 2.x, OpenCLIP ViT-bigG/14 for SDXL's second encoder).
KNOWN_TEXT_TOWERS: dict[int, dict[str, Any]] = {
    768: {"name": "CLIP ViT-L/14 (SD 1.x)", "num_attention_heads": 12, "hidden_act": "quick_gelu"},
    1024: {"name": "OpenCLIP ViT-H/14 (SD 2.x)", "num_attention_heads": 16, "hidden_act": "gelu"},
    1280: {"name": "OpenCLIP ViT-bigG/14 (SDXL)", "num_attention_heads": 20, "hidden_act": "gelu"},
}
_PREFIXES = ("module.", "_orig_mod.", "cond_stage_model.transformer.", "text_encoder.", "text_model.")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def infer_text_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A ``config.json`` dict for a CLIP text tower, read off the tensor shapes.

    Sizes (vocabulary, width, depth, MLP width, positions, projection) come from the tensors; the attention-head
    count and activation, which shapes cannot reveal, come from :data:`KNOWN_TEXT_TOWERS`.

    Raises:
        CheckpointMismatchError: the tensors are not a CLIP text tower, or its width is not a known one.
    """
    from ..loading.errors import CheckpointMismatchError

    shapes = {_strip(k): tuple(v.shape) for k, v in state_dict.items()}
    tok = shapes.get("embeddings.token_embedding.weight")
    pos = shapes.get("embeddings.position_embedding.weight")
    fc1 = shapes.get("encoder.layers.0.mlp.fc1.weight")
    if tok is None or pos is None or fc1 is None:
        raise CheckpointMismatchError(
            "these weights are not a CLIP text encoder (no embeddings.token_embedding / position_embedding / "
            "encoder.layers.0.mlp.fc1 tensors); pass the matching config.json with config=..."
        )
    vocab, hidden = tok
    known = KNOWN_TEXT_TOWERS.get(hidden)
    if known is None:
        raise CheckpointMismatchError(
            f"cannot infer the config of a CLIP text encoder with hidden size {hidden} (known: "
            f"{sorted(KNOWN_TEXT_TOWERS)}); pass the config.json it was saved with: config='path/to/config.json'"
        )
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    projection = shapes.get("text_projection.weight")
    config = {
        "architectures": ["CLIPTextModelWithProjection" if projection else "CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": fc1[0], "num_hidden_layers": layers,
        "num_attention_heads": known["num_attention_heads"], "hidden_act": known["hidden_act"],
        "max_position_embeddings": pos[0], "projection_dim": projection[0] if projection else hidden,
        "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    }
    logger.warning("No config.json given: inferred a %s config from the tensor shapes (%d layers, width %d).",
                   known["name"], layers, hidden)
    return config


def _read_legacy(path: Path) -> dict[str, Any]:
    from ..loading.checkpoint import safe_torch_load
    from ..loading.errors import CheckpointMismatchError

    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text(encoding="utf-8"))
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise CheckpointMismatchError(f"{path} has an empty weight_map")
        state: dict[str, Any] = {}
        for shard in shards:
            state.update(safe_torch_load(path.parent / shard))  # weights_only=True, refuses code
        return state
    return safe_torch_load(path)  # weights_only=True, refuses code


def _config_dict(config: str | os.PathLike[str] | Mapping[str, Any] | Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):  # a transformers CLIPTextConfig
        return dict(config.to_dict())
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot read the config {path}: {exc}") from exc


def convert_legacy_bin(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | Mapping[str, Any] | Any | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a legacy pickle CLIP text encoder into a ``save_pretrained`` safetensors folder; return ``dst``.

    Args:
        src: a ``pytorch_model.bin`` (or ``pytorch_model.bin.index.json``) file, or the folder holding it.
        dst: output folder (``config.json`` + ``model.safetensors``).
        config: the model config: a ``config.json`` path or its folder, a dict, or a ``CLIPTextConfig``.
            Default: the ``config.json`` next to the weights; without one, it is inferred from the tensor shapes
            for the CLIP towers Stable Diffusion uses (see :func:`infer_text_config`).
        overwrite: replace a non-empty ``dst``.

    Raises:
        UnsafeCheckpointError: the pickle holds more than tensors (nothing from it was executed).
        CheckpointMismatchError: the weights do not fit the config (wrong shapes, missing/unexpected keys).
        FileNotFoundError / FileExistsError: no weights at ``src`` / ``dst`` is not empty.
    """
    import torch

    from ..loading.checkpoint import build_text_model, fit_state_dict, text_config_from_dict

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if src.is_dir():
        candidates = [src / "pytorch_model.bin", src / "pytorch_model.bin.index.json"]
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{src} holds no pytorch_model.bin (or pytorch_model.bin.index.json)")
    elif src.is_file():
        weights = src
    else:
        raise FileNotFoundError(f"no such file or folder: {src}")
    if weights.suffix == ".safetensors":
        raise ValueError(f"{weights} is already safetensors; load it directly (load_robust_encoder) instead")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; pass overwrite=True (--overwrite) to replace it")

    state = _read_legacy(weights)
    if config is None and (weights.parent / "config.json").is_file():
        config = weights.parent / "config.json"
    cfg_dict = infer_text_config(state) if config is None else _config_dict(config)
    cfg, cls_name = text_config_from_dict(cfg_dict)
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    model = build_text_model(cfg, cls_name).to(dtype)
    mapped = fit_state_dict(state, model, source=str(weights))
    model.load_state_dict(mapped, strict=True)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.convert-tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        _verify(tmp, model)
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _verify(folder: Path, model: Any) -> None:
    """Re-read the written files and check every tensor is bit-identical to the model's."""
    import torch
    from safetensors.torch import load_file

    from ..loading.errors import CheckpointMismatchError

    written: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        written.update(load_file(str(file)))
    for key, value in model.state_dict().items():
        if key not in written or not torch.equal(written[key], value):
            raise CheckpointMismatchError(f"verification of the converted weights in {folder} failed at {key!r}")
