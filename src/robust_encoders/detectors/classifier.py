"""A user-supplied image classifier as a concept detector (objects, styles on real Stable Diffusion).

Wrap any ``torch.nn.Module`` / callable that maps a preprocessed image batch to class logits
(an ImageNet ResNet-50 for church / garbage truck / parachute / tench, a style classifier for
Van Gogh, ...). A concept is detected when the top-``top_k`` predictions contain one of the
classes named for it.

Example:
    >>> import torch
    >>> from robust_encoders.detectors import ClassifierDetector
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    >>> det = ClassifierDetector(net, ["cat", "church", "dog"], image_size=8)
    >>> det.detect(torch.rand(2, 3, 32, 32), "church").dtype
    torch.bool
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from .base import DetectorError, check_images, find_concept

__all__ = ["ClassifierDetector", "load_classifier_detector"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClassifierDetector:
    """Detector from a classifier ``model(x) -> logits (N, C)``.

    Args:
        model: the classifier (called under ``torch.no_grad``; put into eval mode if it has one).
        class_names: one name per logit.
        image_size: images are resized (bilinear) to this square size first; None keeps them.
        mean, std: per-channel normalisation after resizing (ImageNet's by default; pass
            ``(0.5,)*3`` for a model trained on [-1, 1] inputs, or ``(0,)*3``/``(1,)*3`` for none).
        concept_classes: concept name -> class names that count as that concept
            (e.g. ``{"vangogh": ["van gogh"]}``); a concept not listed must be a class name itself.
        top_k: detected when a concept class is among the top-k predictions (1 = top-1, as
            AdvUnlearn's object evaluation).
        name: a label for reports.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        class_names: Sequence[str],
        *,
        image_size: int | None = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        concept_classes: Mapping[str, Sequence[str]] | None = None,
        top_k: int = 1,
        batch_size: int = 32,
        name: str = "classifier",
    ) -> None:
        if not class_names:
            raise ValueError("ClassifierDetector needs the class names of the classifier's outputs.")
        if hasattr(model, "eval"):
            try:
                model = model.eval()
            except NotImplementedError:  # torch.export modules are already in inference form
                pass
        self.model = model
        self.heads = {"class": tuple(str(c) for c in class_names)}
        self.image_size = image_size
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        self.concept_classes = {k.lower(): list(v) for k, v in (concept_classes or {}).items()}
        self.top_k = top_k
        self.batch_size = batch_size
        self.name = name

    def _device(self) -> torch.device:
        params = getattr(self.model, "parameters", None)
        if params is not None:
            for p in params():
                return p.device
        return torch.device("cpu")

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw logits (N, C) for images in [0, 1]."""
        images = check_images(images)
        out = []
        dev = self._device()
        for i in range(0, len(images), self.batch_size):
            x = images[i : i + self.batch_size]
            if self.image_size is not None and x.shape[-1] != self.image_size:
                x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                    align_corners=False, antialias=True)
            x = ((x - self.mean) / self.std).to(dev)
            logits = self.model(x)
            if not isinstance(logits, torch.Tensor):
                logits = getattr(logits, "logits", logits[0])
            if logits.dim() != 2 or logits.shape[1] != len(self.heads["class"]):
                raise DetectorError(
                    f"The classifier returned shape {tuple(logits.shape)}; expected (N, {len(self.heads['class'])}) "
                    "logits, one per class name."
                )
            out.append(logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.heads["class"]))

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"class": self.logits(images).argmax(-1)}

    def concept_indices(self, concept: str) -> list[int]:
        """Class indices that count as ``concept``."""
        names = self.concept_classes.get(concept.lower(), [concept])
        return [find_concept(self.heads, n)[1] for n in names]

    def detect(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        idx = torch.tensor(self.concept_indices(concept))
        logits = self.logits(images)
        top = logits.topk(min(self.top_k, logits.shape[1]), dim=-1).indices
        return (top.unsqueeze(-1) == idx.view(1, 1, -1)).any(-1).any(-1)


def load_classifier_detector(spec: str, *, class_names: Sequence[str] | str | os.PathLike | None = None,
                             **kwargs) -> ClassifierDetector:
    """Build a :class:`ClassifierDetector` from a command-line spec.

    ``spec`` is either a ``torch.export`` archive (``model.pt2``) or a TorchScript file (``model.pt``);
    class names come from ``class_names`` or a
    ``model.json`` next to it holding ``{"class_names": [...], "image_size": ..., "mean": ..., "std": ...,
    "concept_classes": {...}}``) or ``module:factory``, a Python callable returning a
    ``(model, class_names)`` pair or a ready detector.
    """
    path = Path(spec)
    if path.suffix in (".pt", ".pth", ".ts", ".pt2") or path.exists():
        if not path.exists():
            raise DetectorError(f"Classifier file {path} does not exist.")
        meta: dict = {}
        side = path.with_suffix(".json")
        if side.exists():
            meta = json.loads(side.read_text())
        names = class_names if class_names is not None else meta.get("class_names")
        if isinstance(names, (str, os.PathLike)):
            names = [ln.strip() for ln in Path(names).read_text().splitlines() if ln.strip()]
        if not names:
            raise DetectorError(
                f"No class names for {path}: put {{\"class_names\": [...]}} in {side} or pass a text file "
                "with one class name per line."
            )
        if path.suffix == ".pt2":  # torch.export archive
            model = torch.export.load(str(path)).module()
        else:  # TorchScript
            model = torch.jit.load(str(path), map_location="cpu")
        opts = {k: meta[k] for k in ("image_size", "mean", "std", "concept_classes", "top_k") if k in meta}
        opts.update(kwargs)
        return ClassifierDetector(model, names, name=f"classifier:{path.name}", **opts)
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), attr)()
        except (ImportError, AttributeError) as e:
            raise DetectorError(f"Cannot import classifier factory {spec!r}: {e}") from e
        if hasattr(obj, "detect") and hasattr(obj, "predict"):
            return obj
        model, names = obj
        return ClassifierDetector(model, names, name=f"classifier:{spec}", **kwargs)
    raise DetectorError(
        f"Unknown classifier spec {spec!r}: give a torch.export / TorchScript file (model.pt2 or model.pt, with "
        "model.json beside it) "
        "or 'package.module:factory'."
    )
