"""The real CLIP BPE tokenizer, available fully offline.

The vocabulary (``assets/clip_tokenizer/vocab.json`` + ``merges.txt``) is derived from
OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (MIT licence, as redistributed by open_clip),
so every prompt in this project is ordinary text tokenised exactly as Stable Diffusion 1.x
tokenises it, and attacks search the real 49,408-token vocabulary.

Example:
    >>> from robust_encoders.tokenization import load_clip_tokenizer
    >>> tok = load_clip_tokenizer()
    >>> tok("a photo of a church").input_ids
    [49406, 320, 1125, 539, 320, 2735, 49407]
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ["CLIP_TOKENIZER_DIR", "load_clip_tokenizer"]

CLIP_TOKENIZER_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"


@lru_cache(maxsize=4)
def _cached(model_max_length: int):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=str(CLIP_TOKENIZER_DIR / "vocab.json"),
        merges=str(CLIP_TOKENIZER_DIR / "merges.txt"),
        model_max_length=model_max_length,
    )


def load_clip_tokenizer(model_max_length: int = 77):
    """Return a ``transformers.CLIPTokenizer`` built from the bundled CLIP BPE vocabulary.

    A fresh deep copy is returned each call, so callers may change it freely.
    """
    import copy

    return copy.deepcopy(_cached(model_max_length))
