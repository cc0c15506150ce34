"""The miniature world's ground-truth concept detector behind the :class:`Detector` interface."""

from __future__ import annotations

import os

import torch

from ..miniature.concepts import COLOURS, CONCEPTS, OBJECTS, STYLES
from .base import check_images

__all__ = ["MiniatureDetector"]


class MiniatureDetector:
    """Object / colour / style heads of :func:`robust_encoders.miniature.load_detector`.

    ``detect(images, "star")`` is true where the object head says star; concepts may be
    given by canonical name or synonym ("pentagram").

    Example:
        >>> import torch
        >>> from robust_encoders.detectors import MiniatureDetector
        >>> from robust_encoders.miniature import sample_scenes
        >>> det = MiniatureDetector()
        >>> b = sample_scenes(4, seed=0)
        >>> x = torch.from_numpy(b.images).permute(0, 3, 1, 2).float() / 255
        >>> det.detect(x, "star").shape
        torch.Size([4])
    """

    name = "miniature"
    heads: dict[str, tuple[str, ...]] = {"object": OBJECTS, "colour": COLOURS, "style": STYLES}

    def __init__(self, model=None, *, path: str | os.PathLike | None = None, batch_size: int = 256) -> None:
        if model is None:
            from ..miniature import load_detector

            model = load_detector(path)
        self.model = model.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = check_images(images)
        dev = next(self.model.parameters()).device
        outs: dict[str, list[torch.Tensor]] = {h: [] for h in self.heads}
        for i in range(0, len(images), self.batch_size):
            pred = self.model.predict(images[i : i + self.batch_size].to(dev))
            for h in self.heads:
                outs[h].append(pred[h].cpu())
        if not len(images):
            return {h: torch.zeros(0, dtype=torch.long) for h in self.heads}
        return {h: torch.cat(v) for h, v in outs.items()}

    def detect(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        from ..miniature.concepts import get_concept

        c = CONCEPTS.get(concept) or get_concept(concept)
        return self.predict(images)[c.kind] == c.index
