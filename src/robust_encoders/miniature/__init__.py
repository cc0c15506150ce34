"""The miniature world: a tiny, fully real Stable Diffusion with concepts known by construction.

Everything here is an ordinary diffusers / transformers model saved as safetensors inside
the package, so it loads offline in seconds and every code path that works on it is the
path a real SD 1.x user runs.

Example:
    >>> from robust_encoders.miniature import CONCEPTS, load_pipeline
    >>> CONCEPTS["heart"].kind
    'object'
"""

from __future__ import annotations

from .captions import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, caption, prompt_for
from .concepts import COLOURS, CONCEPTS, KINDS, OBJECTS, STYLES, Concept, concepts_of_kind, get_concept
from .io import WEIGHTS_DIR, load_clip, load_detector, load_pipeline
from .scenes import IMAGE_SIZE, SceneBatch, render_scene, sample_scenes

__all__ = [
    "CONCEPTS",
    "COLOURS",
    "Concept",
    "HELDOUT_TEMPLATES",
    "IMAGE_SIZE",
    "KINDS",
    "OBJECTS",
    "STYLES",
    "SceneBatch",
    "TRAIN_TEMPLATES",
    "WEIGHTS_DIR",
    "caption",
    "concepts_of_kind",
    "get_concept",
    "load_clip",
    "load_detector",
    "load_pipeline",
    "prompt_for",
    "render_scene",
    "sample_scenes",
]
