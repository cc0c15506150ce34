"""Reading encoder weights safely and fitting them to a CLIP text model.

- ``.safetensors`` files (single or sharded) are read with safetensors: no code can run.
- Legacy pickle checkpoints (``pytorch_model.bin``, ``.pt``) are read **only** with
  ``torch.load(..., weights_only=True)``; anything that is not plain tensors is refused with
  :class:`UnsafeCheckpointError`.
- Keys are mapped across transformers versions: transformers 5 dropped the ``text_model.`` prefix from
  ``CLIPTextModel`` state dicts (``CLIPTextModelWithProjection`` keeps it), and old checkpoints carry a persistent
  ``position_ids`` buffer that new models no longer have.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CheckpointMismatchError, UnsafeCheckpointError

if TYPE_CHECKING:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

__all__ = [
    "BIN_PATTERNS",
    "SAFETENSORS_PATTERNS",
    "build_text_model",
    "fit_state_dict",
    "find_weights",
    "parse_dtype",
    "read_state_dict",
    "read_weights_file",
    "safe_torch_load",
    "text_config_from_dict",
]

SAFETENSORS_PATTERNS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
BIN_PATTERNS = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "cond_stage_model.transformer.")

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """``torch.float16`` / ``"fp16"`` / ``"float16"`` / ``"auto"`` / ``None`` -> a ``torch.dtype``, ``"auto"`` or ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key == "auto":
        return "auto"
    if key not in _DTYPES:
        raise ValueError(f"torch_dtype {dtype!r} is not understood; use torch.float32/float16/bfloat16 or 'auto'")
    return _DTYPES[key]


def safe_torch_load(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a pickle checkpoint with ``torch.load(weights_only=True)`` and return its tensors.

    Raises:
        UnsafeCheckpointError: the pickle references anything besides tensors and plain containers (for example
            a payload that would execute code). Nothing from the file is executed.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4 ..." noise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        detail = ""
        for line in str(exc).splitlines():
            if "Unsupported global" in line or "GLOBAL" in line:
                detail = f" ({line.strip()})"
                break
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it is a pickle that contains more than tensors{detail}. Unpickling it "
            "could run arbitrary code, so robust-encoders only reads pickle checkpoints with "
            "torch.load(weights_only=True), and that refused this file. Get a .safetensors version of these "
            "weights, or — only if you fully trust where the file came from — convert it yourself "
            "(torch.load(..., weights_only=False) -> safetensors.torch.save_file(state_dict, 'model.safetensors'))."
            f"\ntorch said: {first}"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointMismatchError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to tensors)"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointMismatchError(f"{path} contains no tensors")
    return tensors


def read_weights_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of one weights file (``.safetensors`` or a pickle read with ``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, metadata
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointMismatchError(f"{path} is not a valid .safetensors file: {exc}") from exc
    return safe_torch_load(path), {}


def find_weights(folder: Path) -> Path | None:
    """The weights entry point of a ``save_pretrained`` folder: safetensors first, then the legacy ``.bin``."""
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All weights of a ``save_pretrained`` folder (single file or sharded with an ``*.index.json``)."""
    entry = find_weights(folder)
    if entry is None:
        raise CheckpointMismatchError(
            f"{folder} has a config.json but no weights: expected model.safetensors or pytorch_model.bin "
            "(or their sharded *.index.json form)"
        )
    if entry.name.endswith(".index.json"):
        index = json.loads(entry.read_text(encoding="utf-8"))
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise CheckpointMismatchError(f"{entry} has an empty weight_map")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            shard_path = folder / shard
            if not shard_path.is_file():
                raise CheckpointMismatchError(f"{entry} lists shard {shard}, which is missing from {folder}")
            state.update(read_weights_file(shard_path)[0])
        return state
    return read_weights_file(entry)[0]


def text_config_from_dict(config: Mapping[str, Any]) -> tuple[CLIPTextConfig, str]:
    """A ``CLIPTextConfig`` and the model class name (``CLIPTextModel``/``CLIPTextModelWithProjection``) from a
    ``config.json`` dict."""
    from transformers import CLIPTextConfig

    data = dict(config)
    architectures = list(data.get("architectures") or [])
    model_type = data.get("model_type")
    if model_type == "clip":
        raise CheckpointMismatchError(
            "config.json describes a full CLIP model (text and vision towers, model_type 'clip'). Load the text "
            "tower and save it on its own first: CLIPTextModel.from_pretrained(path).save_pretrained(out)"
        )
    if model_type not in (None, "clip_text_model"):
        raise CheckpointMismatchError(
            f"config.json describes a '{model_type}' model, not a CLIP text encoder (model_type 'clip_text_model'); "
            "robust-encoders loads CLIPTextModel / CLIPTextModelWithProjection checkpoints"
        )
    cls_name = "CLIPTextModelWithProjection" if "CLIPTextModelWithProjection" in architectures else "CLIPTextModel"
    for key in ("architectures", "model_type", "transformers_version", "_name_or_path"):
        data.pop(key, None)
    cfg = CLIPTextConfig(**data)
    cfg.architectures = [cls_name]
    return cfg, cls_name


def build_text_model(config: CLIPTextConfig, cls_name: str) -> CLIPTextModel | CLIPTextModelWithProjection:
    """An (untrained) text model of class ``cls_name`` for ``config``, to load weights into."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if cls_name == "CLIPTextModelWithProjection" else CLIPTextModel
    return cls(config)


def _canonical_key(key: str, *, wants_prefix: bool, target: Mapping[str, Any]) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    if wants_prefix:
        if not key.startswith("text_model.") and key not in target and f"text_model.{key}" in target:
            key = f"text_model.{key}"
    elif key.startswith("text_model."):
        key = key[len("text_model."):]
    return key


def fit_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    *,
    source: str,
    allow_missing: bool = False,
) -> dict[str, torch.Tensor]:
    """Map ``state_dict`` keys onto ``model`` (legacy ``text_model.`` prefix, old ``position_ids`` buffer,
    ``module.`` wrappers) and check the result fits.

    Raises:
        CheckpointMismatchError: unexpected keys, wrong shapes, or (unless ``allow_missing``) missing keys.
    """
    target = model.state_dict()
    wants_prefix = any(k.startswith("text_model.") for k in target)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _canonical_key(key, wants_prefix=wants_prefix, target=target)
        if new.endswith("position_ids") and new not in target:
            continue  # persistent buffer in transformers < 4.31 checkpoints; rebuilt by the model itself
        mapped[new] = value
    unexpected = sorted(set(mapped) - set(target))
    missing = sorted(set(target) - set(mapped))
    wrong = sorted(
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
        for k in set(mapped) & set(target)
        if tuple(mapped[k].shape) != tuple(target[k].shape)
    )
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) have the wrong shape, e.g. " + "; ".join(wrong[:3]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    if missing and not allow_missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
    if not set(mapped) & set(target):
        problems.append("no key matches the model at all")
    if problems:
        hint = ""
        if "text_projection.weight" in missing and len(missing) == 1:
            hint = (" The checkpoint has no text_projection: it is a plain CLIPTextModel, but the config asks for a "
                    "CLIPTextModelWithProjection (set architectures to ['CLIPTextModel'] or use the right config).")
        elif wrong:
            hint = " The config does not describe these weights: use the config.json that was saved with them."
        raise CheckpointMismatchError(
            f"The weights in {source} do not fit a {type(model).__name__} "
            f"(hidden size {getattr(model.config, 'hidden_size', '?')}, "
            f"{getattr(model.config, 'num_hidden_layers', '?')} layers): " + "; ".join(problems) + "." + hint
        )
    return mapped
