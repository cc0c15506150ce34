"""The detector interface every evaluation uses: "does this image show the concept?".

A detector answers two questions about a batch of images (float tensors in [0, 1], shape
(N, 3, H, W)):

* :meth:`Detector.predict` gives class indices per head (e.g. ``{"object": ..., "colour": ...}``),
  used for retain accuracy on non-target concepts;
* :meth:`Detector.detect` gives one bool per image: is ``concept`` present? Attack success,
  Pre-ASR and ASR are counted from it.

``heads`` maps each head to its class names, so a concept name can be looked up in it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Detector", "DetectorError", "check_images", "find_concept"]


class DetectorError(RuntimeError):
    """A detector cannot be built or cannot judge the requested concept."""


@runtime_checkable
class Detector(Protocol):
    """What the evaluation suite needs from a concept detector."""

    name: str
    heads: dict[str, tuple[str, ...]]

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class indices (N,) per head for images in [0, 1] (N, 3, H, W)."""
        ...

    def detect(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        """Bool (N,): is ``concept`` in each image?"""
        ...


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate an image batch (float, (N, 3, H, W), values in [0, 1]) and return it as float32."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"Detectors take float images of shape (N, 3, H, W) in [0, 1]; got {shape}.")
    images = images.float()
    if images.numel() and (float(images.min()) < -1e-3 or float(images.max()) > 1 + 1e-3):
        raise ValueError(
            "Detector input must lie in [0, 1] (diffusers output_type='pt' gives that); "
            f"got values in [{float(images.min()):.2f}, {float(images.max()):.2f}]. "
            "Images in [-1, 1] need (x + 1) / 2 first."
        )
    return images


def find_concept(heads: dict[str, tuple[str, ...]], concept: str) -> tuple[str, int]:
    """(head, class index) of ``concept`` in a detector's heads; a teaching KeyError otherwise."""
    key = concept.strip().lower().replace("_", " ")
    for head, names in heads.items():
        for i, n in enumerate(names):
            if n.lower().replace("_", " ") == key:
                return head, i
    known = ", ".join(f"{h}: {', '.join(n)}" for h, n in heads.items())
    raise KeyError(f"The detector has no class called {concept!r}. It knows {known}.")
