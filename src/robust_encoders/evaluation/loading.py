"""Resolve "the encoder to evaluate" from what a user types on the command line."""

from __future__ import annotations

import copy
import os
from pathlib import Path

__all__ = ["ORIGINAL_ALIASES", "load_encoder_for_eval"]

ORIGINAL_ALIASES = ("original", "base", "none")


def _from_folder(folder: Path, pipe):
    from transformers import CLIPTextModel

    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        base = copy.deepcopy(pipe.text_encoder)
        return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    return CLIPTextModel.from_pretrained(str(folder))


def load_encoder_for_eval(spec: str | os.PathLike, *, pipe):
    """(encoder, label) for ``spec``.

    ``spec`` may be ``original`` (the pipeline's own encoder), a trainer run folder (holding
    ``robust_encoder.json`` and ``text_encoder/``), a ``save_pretrained`` folder, a LoRA adapter
    folder, or anything :func:`robust_encoders.load_robust_encoder` accepts (registry name, Hub
    id, weights file). The pipeline's encoder is the base of adapters.
    """
    text = os.fspath(spec)
    path = Path(text)
    label = path.name if path.exists() else text
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: the encoder under test is a pair (or one slot)
        from ..core.text import TextEncoderPair

        if text.lower() in ORIGINAL_ALIASES:
            return TextEncoderPair.from_pipeline(pipe), "original"
        from ..loading.apply import _load_for_pipe

        loaded = _load_for_pipe(text, {})
        if "" in loaded:
            raise ValueError(
                f"{text!r} holds a single text encoder, but the SDXL pipeline has two. Pass an SDXL run or export "
                "folder (text_encoder/ and/or text_encoder_2/ subfolders; a missing one keeps the pipeline's own)."
            )
        return loaded, label
    if text.lower() in ORIGINAL_ALIASES:
        return pipe.text_encoder, "original"
    loader = None
    try:
        from ..loading import load_robust_encoder as loader
    except ImportError:
        loader = None
    if path.is_dir() and (path / "robust_encoder.json").exists() and (path / "text_encoder").is_dir():
        if loader is not None:
            try:
                return loader(path, base_model=pipe.text_encoder), label
            except Exception:  # an older loader that does not know run folders: read the encoder directly
                pass
        return _from_folder(path / "text_encoder", pipe).eval(), label
    if loader is not None:
        try:
            kwargs = {"base_model": pipe.text_encoder} if (path / "adapter_config.json").exists() else {}
            return loader(text, **kwargs), label
        except Exception as e:
            if not path.is_dir():
                raise
            err = e
    else:
        err = None
    if path.is_dir():
        try:
            return _from_folder(path, pipe).eval(), label
        except Exception as e2:
            raise FileNotFoundError(
                f"Could not load a text encoder from {path}: {e2}" + (f" (load_robust_encoder said: {err})" if err else "")
            ) from e2
    raise FileNotFoundError(
        f"{text!r} is neither 'original', a folder, nor a name load_robust_encoder knows "
        "(see `robust-encoders list`)."
    )
