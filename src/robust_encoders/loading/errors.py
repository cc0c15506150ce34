"""Exceptions and warnings raised while loading or swapping robust encoders.

Every error message says what is wrong and what would work instead.
"""

from __future__ import annotations

__all__ = [
    "CheckpointMismatchError",
    "CompatibilityWarning",
    "EncoderNotFoundError",
    "IncompatibleEncoderError",
    "UnsafeCheckpointError",
]


class EncoderNotFoundError(OSError):
    """The encoder's files could not be found: not a local path, not in the Hugging Face cache, Hub unreachable.

    Subclasses ``OSError`` like transformers' own "can't load" errors.
    """


class UnsafeCheckpointError(ValueError):
    """A pickle checkpoint (``.bin``/``.pt``) holds more than tensors; loading it would run code, so it is refused."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model they are meant for (wrong keys, wrong shapes, or an adapter
    whose weights match no module of its base model)."""


class IncompatibleEncoderError(ValueError):
    """An encoder does not fit a pipeline (hidden size, vocabulary, positions, SDXL projection, encoder count)."""


class CompatibilityWarning(UserWarning):
    """An encoder fits a pipeline, but was made for a different (compatible) base model."""
