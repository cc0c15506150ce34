"""robust-encoders: adversarially robust concept-erased CLIP text encoders for Stable Diffusion.

Importing the package is cheap: torch, transformers and diffusers load only when a loading function is first used.

Example:
    >>> import robust_encoders as re_
    >>> [spec.name for spec in re_.list_pretrained()]
    ['nudity', 'vangogh', 'church', 'garbage_truck', 'parachute', 'tench', 'miniature/star', 'miniature/red', 'miniature/stripes']
    >>> pipe = re_.apply_robust_encoder(pipe, "nudity")   # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import attach

__version__ = "0.1.0"

# public name -> submodule that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "load_robust_encoder": "robust_encoders.loading",
    "apply_robust_encoder": "robust_encoders.loading",
    "download_robust_encoder": "robust_encoders.loading",
    "check_encoder_compatibility": "robust_encoders.loading",
    "encoder_info": "robust_encoders.loading",
    "EncoderNotFoundError": "robust_encoders.loading",
    "UnsafeCheckpointError": "robust_encoders.loading",
    "CheckpointMismatchError": "robust_encoders.loading",
    "IncompatibleEncoderError": "robust_encoders.loading",
    "CompatibilityWarning": "robust_encoders.loading",
    "list_pretrained": "robust_encoders.registry",
    "get_pretrained": "robust_encoders.registry",
    "register_pretrained": "robust_encoders.registry",
    "unregister_pretrained": "robust_encoders.registry",
    "PretrainedSpec": "robust_encoders.registry",
    "UnknownEncoderError": "robust_encoders.registry",
    "load_clip_tokenizer": "robust_encoders.tokenization",
}

__all__ = [
    "CheckpointMismatchError",
    "CompatibilityWarning",
    "EncoderNotFoundError",
    "IncompatibleEncoderError",
    "PretrainedSpec",
    "UnknownEncoderError",
    "UnsafeCheckpointError",
    "__version__",
    "apply_robust_encoder",
    "check_encoder_compatibility",
    "download_robust_encoder",
    "encoder_info",
    "get_pretrained",
    "list_pretrained",
    "load_clip_tokenizer",
    "load_robust_encoder",
    "register_pretrained",
    "unregister_pretrained",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .loading import (
        CheckpointMismatchError,
        CompatibilityWarning,
        EncoderNotFoundError,
        IncompatibleEncoderError,
        UnsafeCheckpointError,
        apply_robust_encoder,
        check_encoder_compatibility,
        download_robust_encoder,
        encoder_info,
        load_robust_encoder,
    )
    from .registry import (
        PretrainedSpec,
        UnknownEncoderError,
        get_pretrained,
        list_pretrained,
        register_pretrained,
        unregister_pretrained,
    )
    from .tokenization import load_clip_tokenizer


__getattr__, __dir__ = attach(__name__, _LAZY, __all__)
