"""``apply_robust_encoder``: swap robust text encoder(s) into a diffusers Stable Diffusion pipeline, safely.

Everything is checked before the pipeline is touched; on any error the pipeline is exactly as it was.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..registry import (
    PretrainedSpec,
    UnknownEncoderError,
    family_of_base_model,
    get_pretrained,
    list_pretrained,
)
from .errors import CompatibilityWarning, IncompatibleEncoderError
from .load import ENCODER_SLOTS, _load_components, encoder_info

__all__ = ["apply_robust_encoder", "check_encoder_compatibility", "pipeline_family"]

_TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
_KNOWN_WIDTHS = {
    768: "SD 1.x (CLIP ViT-L/14)",
    1024: "SD 2.x (OpenCLIP ViT-H/14)",
    1280: "SDXL's second encoder (OpenCLIP bigG)",
    2048: "SDXL (CLIP-L 768 + OpenCLIP bigG 1280)",
}
_FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def _width_note(width: int) -> str:
    return f" — {_KNOWN_WIDTHS[width]}" if width in _KNOWN_WIDTHS else ""


def _base(model: torch.nn.Module) -> torch.nn.Module:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _cfg(model: torch.nn.Module) -> Any:
    return _base(model).config


def _describe(model: torch.nn.Module) -> str:
    cfg = _cfg(model)
    out = f"{type(_base(model)).__name__} (hidden size {cfg.hidden_size}"
    if type(_base(model)).__name__ == "CLIPTextModelWithProjection":
        out += f", projection {cfg.projection_dim}"
    return out + ")"


def _slots(pipe: Any) -> list[str]:
    return [s for s in ENCODER_SLOTS if getattr(pipe, s, None) is not None]


def _cross_attention_dim(unet: Any) -> int | None:
    dim = getattr(unet.config, "cross_attention_dim", None)
    if isinstance(dim, (list, tuple)):
        dims = set(dim)
        return dims.pop() if len(dims) == 1 else None
    return dim


def _is_text_time(pipe: Any) -> bool:
    unet = getattr(pipe, "unet", None)
    return unet is not None and getattr(unet.config, "addition_embed_type", None) == "text_time"


def _expected_projection(pipe: Any) -> int | None:
    """Width of the pooled text embedding the SDXL UNet's add-embedding expects, if it uses one."""
    if not _is_text_time(pipe):
        return None
    cfg = pipe.unet.config
    total = getattr(cfg, "projection_class_embeddings_input_dim", None)
    time_dim = getattr(cfg, "addition_time_embed_dim", None)
    if total is None or time_dim is None:
        return None
    n_time_ids = 5 if getattr(pipe.config, "requires_aesthetics_score", False) else 6
    return int(total) - n_time_ids * int(time_dim)


def pipeline_family(pipe: Any) -> str | None:
    """``"sd1"``, ``"sd2"`` or ``"sdxl"`` for a pipeline (from its Hub id if well known, else from its shapes),
    or ``None`` when it cannot tell (e.g. a tiny test pipeline)."""
    family = family_of_base_model(getattr(pipe, "name_or_path", None))
    if family:
        return family
    if _is_text_time(pipe) and getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    unet = getattr(pipe, "unet", None)
    width = _cross_attention_dim(unet) if unet is not None else None
    return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width or -1)


def _assign(pipe: Any, new: Mapping[str, torch.nn.Module], what: str) -> dict[str, torch.nn.Module]:
    """Map loaded encoders onto pipeline slots, or raise the teaching error."""
    slots = _slots(pipe)
    pipe_name = type(pipe).__name__
    if "" in new:
        encoder = new[""]
        if len(slots) == 1:
            return {slots[0]: encoder}
        current = ", ".join(f"{s} = {_describe(getattr(pipe, s))}" for s in slots)
        width = _cross_attention_dim(pipe.unet)
        cls = type(_base(encoder)).__name__
        width_hint = ""
        if cls == "CLIPTextModel":
            width_hint = (f" A single encoder like this one fits a one-encoder pipeline whose UNet has "
                          f"cross_attention_dim {_cfg(encoder).hidden_size}{_width_note(_cfg(encoder).hidden_size)}.")
        raise IncompatibleEncoderError(
            f"{pipe_name} needs {len(slots)} text encoders ({current}; their hidden sizes add up to the UNet's "
            f"cross_attention_dim {width}), but {what} is one {_describe(encoder)}. Pass both, as a dict "
            "{'text_encoder': ..., 'text_encoder_2': ...} or a folder with text_encoder/ and text_encoder_2/ "
            "subfolders; to replace only one of them on purpose, pass a dict with just that key." + width_hint
        )
    unknown = [k for k in new if k not in ENCODER_SLOTS]
    if unknown:
        raise IncompatibleEncoderError(f"unknown encoder slot(s) {unknown}; use 'text_encoder' and/or 'text_encoder_2'")
    absent = [k for k in new if k not in slots]
    if absent:
        raise IncompatibleEncoderError(
            f"{what} provides {', '.join(new)}, but {pipe_name} has no {', '.join(absent)} "
            f"(it has {', '.join(slots) or 'no text encoder'}). "
            + ("It is a one-encoder pipeline: pass a single encoder, or the 'text_encoder' entry alone."
               if slots == ["text_encoder"] else "")
        )
    return dict(new)


def check_encoder_compatibility(pipe: Any, encoders: Mapping[str, torch.nn.Module]) -> list[str]:
    """Everything that would break if ``encoders`` (slot -> model) replaced the pipeline's text encoders.

    Returns a list of human-readable problems (empty when they fit). Checks: encoder class per slot, hidden size
    vs ``unet.config.cross_attention_dim`` (SDXL: sum of both encoders), vocabulary vs tokenizer, max positions
    vs tokenizer ``model_max_length``, and the SDXL pooled projection width vs the UNet's add-embedding.
    """
    problems: list[str] = []
    unet = pipe.unet
    slots = _slots(pipe)
    final = {s: encoders.get(s, getattr(pipe, s)) for s in slots}

    for slot, enc in encoders.items():
        cfg, cls = _cfg(enc), type(_base(enc)).__name__
        old_cls = type(_base(getattr(pipe, slot))).__name__
        needs_projection = old_cls == "CLIPTextModelWithProjection" or (slot == "text_encoder_2" and _is_text_time(pipe))
        if needs_projection and cls != "CLIPTextModelWithProjection":
            problems.append(
                f"{slot} must be a CLIPTextModelWithProjection (the pipeline feeds its projected pooled output to "
                f"the UNet as text_embeds), got a {cls}. An SDXL second encoder (OpenCLIP bigG + projection) fits."
            )
        elif not needs_projection and cls != old_cls and cls == "CLIPTextModelWithProjection":
            problems.append(
                f"{slot} must be a {old_cls} (the pipeline reads its first output as token embeddings), got a "
                "CLIPTextModelWithProjection, whose first output is the pooled projection."
            )
        tok = getattr(pipe, _TOKENIZER_OF[slot], None)
        if tok is not None:
            n_tok = len(tok)
            if cfg.vocab_size < n_tok:
                problems.append(
                    f"{slot}: the pipeline's {_TOKENIZER_OF[slot]} has {n_tok} tokens but the encoder only embeds "
                    f"{cfg.vocab_size}; token ids >= {cfg.vocab_size} would crash. An encoder with vocab_size "
                    f">= {n_tok} fits (tokens added by textual inversion? load them after swapping)."
                )
            max_len = getattr(tok, "model_max_length", None)
            if isinstance(max_len, int) and max_len < 10**6 and cfg.max_position_embeddings < max_len:
                problems.append(
                    f"{slot}: the {_TOKENIZER_OF[slot]} makes sequences of {max_len} tokens but the encoder has only "
                    f"{cfg.max_position_embeddings} positions; an encoder with max_position_embeddings >= "
                    f"{max_len} fits."
                )
    width = _cross_attention_dim(unet)
    hidden = {s: _cfg(m).hidden_size for s, m in final.items()}
    total = sum(hidden.values())
    if width is not None and total != width:
        if len(final) == 1:
            (slot, h), = hidden.items()
            problems.append(
                f"{slot}: hidden size {h}{_width_note(h)} does not match the UNet's cross_attention_dim {width}"
                f"{_width_note(width)}. An encoder with hidden size {width} would fit this pipeline; this encoder "
                f"fits pipelines whose UNet has cross_attention_dim {h}."
            )
        else:
            parts = " + ".join(f"{s} {h}" for s, h in hidden.items())
            fix = "; ".join(
                f"With this {other} ({hidden[other]}), {s} would need hidden size {width - hidden[other]}"
                for s in encoders for other in hidden if other != s
            )
            problems.append(
                f"hidden sizes {parts} = {total}, but the UNet's cross_attention_dim is {width}{_width_note(width)} "
                f"(the two encoders' token embeddings are concatenated). {fix}."
            )
    expected = _expected_projection(pipe)
    if expected is not None and slots:
        pooled_slot = slots[-1]
        if pooled_slot in encoders:
            cfg = _cfg(encoders[pooled_slot])
            proj = getattr(cfg, "projection_dim", None)
            if type(_base(encoders[pooled_slot])).__name__ == "CLIPTextModelWithProjection" and proj != expected:
                problems.append(
                    f"{pooled_slot}: projection_dim {proj}, but the UNet's add-embedding expects pooled text "
                    f"embeddings of width {expected} (projection_class_embeddings_input_dim "
                    f"{unet.config.projection_class_embeddings_input_dim} minus the time ids); an encoder with "
                    f"projection_dim {expected} fits."
                )
    return problems


def _early_registry_check(pipe: Any, spec: PretrainedSpec) -> None:
    """Reject a registry entry made for another family before downloading anything."""
    family = pipeline_family(pipe)
    if family is None or family in spec.families:
        return
    fitting = [s.name for s in list_pretrained(family=family)]
    fam = _FAMILY_NAMES.get(family, family)
    raise IncompatibleEncoderError(
        f"{spec.name!r} is a text encoder for {', '.join(_FAMILY_NAMES.get(f, f) for f in spec.families)} "
        f"(trained on {', '.join(spec.base_models) or 'unknown'}), but this {type(pipe).__name__} is {fam}"
        f" ({getattr(pipe, 'name_or_path', None) or 'detected from its shapes'}). "
        + (f"Registry entries that fit {fam}: {', '.join(fitting)}." if fitting
           else f"No registry entry fits {fam} yet; train one, or use a "
                f"{' or '.join(_FAMILY_NAMES.get(f, f) for f in spec.families)} pipeline.")
    )


def _family_warnings(pipe: Any, assignment: Mapping[str, torch.nn.Module]) -> None:
    """Compare the base families an encoder records (registry entry, or the ``robust_encoder.json`` of a run or
    export) with the pipeline's: refuse another family, warn when the base differs within the family."""
    pipe_base = getattr(pipe, "name_or_path", None)
    family = pipeline_family(pipe)
    for slot, enc in assignment.items():
        info = encoder_info(enc)
        bases, families = tuple(info.get("base_models", ())), tuple(info.get("families", ()))
        label = info.get("name") or info.get("source") or "the encoder"
        if family and families and family not in families:
            names = ", ".join(_FAMILY_NAMES.get(f, f) for f in families)
            where = pipe_base or "detected from its shapes"
            raise IncompatibleEncoderError(
                f"{label} ({slot}) was trained for {names} ({', '.join(bases) or 'base unknown'}), but this "
                f"{type(pipe).__name__} is {_FAMILY_NAMES.get(family, family)} ({where}). Text encoders only "
                "transfer within a family (every SD 1.x fine-tune shares CLIP-L; SD 2.x uses OpenCLIP-H; SDXL pairs "
                f"CLIP-L with OpenCLIP bigG). Use a {names} pipeline, or train an encoder for this one "
                f"(robust-encoders train ... model.base_model={pipe_base or 'PATH'}). The pipeline was not changed."
            )
        if not bases or not pipe_base or pipe_base in bases:
            continue
        if family and family in families:
            warnings.warn(
                f"{label} ({slot}) was trained against {', '.join(bases)}; this pipeline is {pipe_base}. Both are "
                f"{_FAMILY_NAMES.get(family, family)} and share the text encoder architecture, so it fits, but "
                "its erasure and robustness were measured on the original base.",
                CompatibilityWarning,
                stacklevel=3,
            )


def _load_for_pipe(value: Any, kwargs: dict[str, Any]) -> dict[str, torch.nn.Module]:
    built, _ = _load_components(
        value,
        subfolder=kwargs.get("subfolder"),
        revision=kwargs.get("revision"),
        torch_dtype=None,
        device=None,
        cache_dir=kwargs.get("cache_dir"),
        local_files_only=kwargs.get("local_files_only"),
        merge_adapter=kwargs.get("merge_adapter", True),
        base_model=kwargs.get("base_model"),
    )
    return built


_ALLOWED_KWARGS = {"subfolder", "revision", "cache_dir", "local_files_only", "merge_adapter", "base_model",
                   "torch_dtype", "device"}


def apply_robust_encoder(pipe: Any, encoder_or_name: Any, **kwargs: Any) -> Any:
    """Replace the text encoder(s) of a diffusers Stable Diffusion pipeline with robust one(s).

    Args:
        pipe: a ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (or img2img/inpaint variant).
        encoder_or_name: a loaded encoder; anything :func:`load_robust_encoder` accepts (registry name, Hub id,
            local folder, adapter, weights file); a folder with ``text_encoder/`` and ``text_encoder_2/``; or a
            dict ``{"text_encoder": ..., "text_encoder_2": ...}`` of encoders or names (one key = replace only
            that encoder, on purpose).
        **kwargs: passed to :func:`load_robust_encoder` when loading (``revision``, ``cache_dir``,
            ``local_files_only``, ``subfolder``, ``merge_adapter``, ``base_model``). The result is always cast to
            the dtype and device of the encoder it replaces, so ``torch_dtype``/``device`` are ignored.

    Returns:
        The same pipeline object, its encoder(s) replaced.

    Raises:
        IncompatibleEncoderError: (a ``ValueError``) saying what does not fit and what would; the pipeline is left
            untouched. Loading errors (:class:`EncoderNotFoundError`, ...) also leave it untouched.

    Example:
        >>> from diffusers import StableDiffusionPipeline
        >>> from robust_encoders import apply_robust_encoder
        >>> pipe = StableDiffusionPipeline.from_pretrained("CompVis/stable-diffusion-v1-4")  # doctest: +SKIP
        >>> pipe = apply_robust_encoder(pipe, "nudity")                                     # doctest: +SKIP
        >>> image = pipe("a photo of a church").images[0]                                   # doctest: +SKIP
    """
    unknown = set(kwargs) - _ALLOWED_KWARGS
    if unknown:
        raise TypeError(f"apply_robust_encoder() got unexpected keyword argument(s) {sorted(unknown)}; "
                        f"allowed: {sorted(_ALLOWED_KWARGS)}")
    if getattr(pipe, "unet", None) is None or not hasattr(pipe.unet, "config"):
        raise IncompatibleEncoderError(
            f"apply_robust_encoder supports UNet-based Stable Diffusion pipelines (SD 1.x, 2.x, XL); "
            f"{type(pipe).__name__} has no unet."
        )
    if not _slots(pipe):
        raise IncompatibleEncoderError(f"{type(pipe).__name__} has no text encoder to replace.")

    if isinstance(encoder_or_name, (str, os.PathLike)):
        what = repr(os.fspath(encoder_or_name))
        if isinstance(encoder_or_name, str) and not os.path.exists(encoder_or_name):
            try:
                _early_registry_check(pipe, get_pretrained(encoder_or_name))
            except UnknownEncoderError:
                pass
        new = _load_for_pipe(encoder_or_name, kwargs)
    elif isinstance(encoder_or_name, torch.nn.Module):
        what = "the given encoder"
        new = {"": encoder_or_name}
    elif isinstance(encoder_or_name, Mapping):
        what = "the given dict"
        new = {}
        for slot, value in encoder_or_name.items():
            if isinstance(value, torch.nn.Module):
                new[slot] = value
            else:
                loaded = _load_for_pipe(value, kwargs)
                if len(loaded) != 1:
                    raise IncompatibleEncoderError(f"{slot}: {value!r} holds {len(loaded)} encoders; give one each")
                new[slot] = next(iter(loaded.values()))
    else:
        raise TypeError(
            f"encoder_or_name must be a name/path, a text encoder module or a dict of them, got "
            f"{type(encoder_or_name).__name__}"
        )

    assignment = _assign(pipe, new, what)
    problems = check_encoder_compatibility(pipe, assignment)
    if problems:
        raise IncompatibleEncoderError(
            f"Cannot put {what} into this {type(pipe).__name__} (the pipeline was not changed):\n"
            + "\n".join(f"  * {p}" for p in problems)
        )
    _family_warnings(pipe, assignment)

    ready: dict[str, torch.nn.Module] = {}
    for slot, enc in assignment.items():
        old = getattr(pipe, slot)
        info = getattr(enc, "_robust_encoders_info", None)
        if getattr(old, "_hf_hook", None) is not None:
            warnings.warn(
                f"{slot} had accelerate offload hooks; call pipe.enable_model_cpu_offload() (or the sequential "
                "variant) again after swapping.",
                CompatibilityWarning,
                stacklevel=2,
            )
        moved = enc.to(device=old.device, dtype=old.dtype).eval()
        if info is not None and getattr(moved, "_robust_encoders_info", None) is None:
            object.__setattr__(moved, "_robust_encoders_info", info)
        ready[slot] = moved
    pipe.register_modules(**ready)
    return pipe
