"""Loading robust text encoders and swapping them into Stable Diffusion pipelines.

Example:
    >>> from robust_encoders.loading import apply_robust_encoder, load_robust_encoder
    >>> encoder = load_robust_encoder("nudity")          # doctest: +SKIP
    >>> pipe = apply_robust_encoder(pipe, encoder)       # doctest: +SKIP
"""

from __future__ import annotations

from .apply import apply_robust_encoder, check_encoder_compatibility, pipeline_family
from .errors import (
    CheckpointMismatchError,
    CompatibilityWarning,
    EncoderNotFoundError,
    IncompatibleEncoderError,
    UnsafeCheckpointError,
)
from .load import ENCODER_SLOTS, download_robust_encoder, encoder_info, load_robust_encoder

__all__ = [
    "ENCODER_SLOTS",
    "CheckpointMismatchError",
    "CompatibilityWarning",
    "EncoderNotFoundError",
    "IncompatibleEncoderError",
    "UnsafeCheckpointError",
    "apply_robust_encoder",
    "check_encoder_compatibility",
    "download_robust_encoder",
    "encoder_info",
    "load_robust_encoder",
    "pipeline_family",
]
