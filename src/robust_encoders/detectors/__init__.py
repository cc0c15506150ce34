"""Concept detectors behind one interface (:class:`Detector`): miniature, NudeNet, user classifiers.

Example:
    >>> from robust_encoders.detectors import load_detector
    >>> det = load_detector("miniature")
    >>> det.heads["colour"]
    ('red', 'green', 'blue', 'yellow', 'purple')
"""

from __future__ import annotations

from .base import Detector, DetectorError, check_images, find_concept
from .classifier import ClassifierDetector, load_classifier_detector
from .miniature import MiniatureDetector
from .nudenet import NUDE_CLASSES, NudeNetDetector

__all__ = [
    "ClassifierDetector",
    "Detector",
    "DetectorError",
    "MiniatureDetector",
    "NUDE_CLASSES",
    "NudeNetDetector",
    "check_images",
    "find_concept",
    "load_classifier_detector",
    "load_detector",
]


def load_detector(spec: str = "miniature", **kwargs) -> Detector:
    """A detector from a short spec: ``miniature``, ``nudenet``, or ``classifier:SPEC``.

    ``classifier:SPEC`` takes a TorchScript file or ``module:factory`` (see
    :func:`load_classifier_detector`).
    """
    if spec == "miniature":
        return MiniatureDetector(**kwargs)
    if spec == "nudenet":
        return NudeNetDetector(**kwargs)
    if spec.startswith("classifier:"):
        return load_classifier_detector(spec[len("classifier:") :], **kwargs)
    raise DetectorError(
        f"Unknown detector {spec!r}; use 'miniature', 'nudenet' (optional extra) or 'classifier:PATH_OR_FACTORY'."
    )
