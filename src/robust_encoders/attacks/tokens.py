"""Token helpers for discrete attacks: decoding ids to text and the round-trip-safe vocabulary.

A discrete attack searches real vocabulary tokens and must hand back *text* that, tokenised
again, gives exactly the tokens it found. Two things stand in the way:

* Decoding. CLIP's BPE marks word ends with ``</w>``; a tokenizer built from a bare
  vocabulary may lack a decoder and return ``"a</w>red</w>"``. :func:`decode_ids` decodes
  the way OpenAI's reference ``SimpleTokenizer`` does (byte-level unicode back to bytes,
  ``</w>`` to a space), whatever the tokenizer object.
* Round trips. Word pieces (no ``</w>``) glue onto the next word, and some whole-word tokens
  re-tokenise differently (digits after letters, emoji). :func:`safe_token_ids` lists the
  tokens whose decoded text tokenises back to exactly that one token; any sequence of them,
  joined by spaces, round-trips.

Example:
    >>> from robust_encoders.tokenization import load_clip_tokenizer
    >>> from robust_encoders.attacks.tokens import decode_ids
    >>> tok = load_clip_tokenizer()
    >>> decode_ids(tok, tok("a red star").input_ids)
    'a red star'
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

__all__ = ["decode_ids", "safe_token_ids", "special_token_ids"]


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2 / CLIP byte <-> unicode table (the same table CLIP's SimpleTokenizer uses).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def special_token_ids(tokenizer) -> set[int]:
    """Ids of special tokens (bos/eos/pad/unk) of a tokenizer."""
    out = set()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            out.add(v)
    return out


def decode_ids(tokenizer, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
    """Decode token ids to text as CLIP's reference tokenizer does (``</w>`` becomes a space).

    Padding after the first end-of-text token is dropped.
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    ids = list(ids)
    eos = getattr(tokenizer, "eos_token_id", None)
    special = special_token_ids(tokenizer)
    if eos is not None and eos in ids:
        # keep everything up to the first eos *after* content (the row may start with bos)
        first = ids.index(eos)
        ids = ids[: first + 1]
    if skip_special_tokens:
        ids = [i for i in ids if i not in special]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    table = _byte_decoder()
    text = "".join(t for t in tokens if t is not None)
    raw = bytearray()
    for ch in text:
        if ch in table:
            raw.append(table[ch])
        else:  # a tokenizer whose vocabulary is not byte-level: keep the character as is
            raw.extend(ch.encode("utf-8"))
    return " ".join(raw.decode("utf-8", errors="replace").replace("</w>", " ").split())


def _fingerprint(tokenizer) -> tuple:
    vocab_size = len(tokenizer)
    probe = tuple(tokenizer.convert_ids_to_tokens([0, 1000, min(40000, vocab_size - 1)]))
    return type(tokenizer).__name__, vocab_size, probe


_SAFE_CACHE: dict[tuple, torch.Tensor] = {}


def safe_token_ids(tokenizer) -> torch.Tensor:
    """Sorted ids of tokens whose decoded text tokenises back to exactly that single token.

    Computed once per tokenizer vocabulary (about a second for CLIP's 49,408 tokens) and
    cached. Special tokens are excluded.
    """
    key = _fingerprint(tokenizer)
    if key in _SAFE_CACHE:
        return _SAFE_CACHE[key]
    special = special_token_ids(tokenizer)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = [decode_ids(tokenizer, [i]) for i in ids]
    enc = tokenizer([t if t else " " for t in texts], add_special_tokens=False).input_ids
    keep = [i for i, t, e in zip(ids, texts, enc, strict=True) if t and list(e) == [i]]
    if not keep:
        raise RuntimeError(
            f"No token of {type(tokenizer).__name__} survives a decode/re-tokenise round trip; "
            "a discrete attack needs a BPE tokenizer such as CLIP's."
        )
    out = torch.tensor(keep, dtype=torch.long)
    _SAFE_CACHE[key] = out
    return out
