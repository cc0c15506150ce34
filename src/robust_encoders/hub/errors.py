"""Errors raised by the Hub layer (export, push, pull, convert).

Every message says what went wrong and what to do about it. Loading-related errors (unsafe pickles, weights that
do not fit) are the loader's own :mod:`robust_encoders.loading.errors` classes, re-used here so callers catch one
type wherever a checkpoint is read.
"""

from __future__ import annotations

__all__ = [
    "ExportError",
    "ExportExistsError",
    "HubAuthError",
    "HubConnectionError",
    "HubError",
    "HubPermissionError",
    "HubUploadError",
]


class ExportError(ValueError):
    """A run folder cannot be exported: missing or inconsistent files, invalid evaluation results, bad card."""


class ExportExistsError(ExportError, FileExistsError):
    """The export destination already holds an export (or other files) and ``overwrite`` was not given."""


class HubError(RuntimeError):
    """Base class of the Hub errors below. The local folder is never modified when one is raised."""


class HubAuthError(HubError):
    """No Hugging Face token was found, or the Hub rejected it (HTTP 401)."""


class HubPermissionError(HubError):
    """The token is valid but may not write to this repo or namespace (HTTP 403)."""


class HubConnectionError(HubError, ConnectionError):
    """The Hub endpoint could not be reached (network down, DNS, proxy, timeout) or offline mode is on."""


class HubUploadError(HubError):
    """The Hub answered with an error while uploading or committing (e.g. HTTP 5xx, connection dropped)."""
