"""Text-encoder plumbing shared by the trainer and the attacks.

Attacks optimise *input token embeddings* (continuous soft prompts, or a relaxed one-hot
over the vocabulary times the embedding matrix), so we need the CLIP text encoder's forward
pass starting from token embeddings instead of token ids. ``encode_from_token_embeds`` is
that pass: position embeddings, causal self-attention, final layer norm, and pooling at the
end-of-text token, matching ``CLIPTextModel(input_ids)`` exactly when fed the looked-up
embeddings.

Example:
    >>> import torch
    >>> from transformers import CLIPTextConfig, CLIPTextModel
    >>> from robust_encoders.core.text import encode_from_token_embeds, tokenize
    >>> from robust_encoders.tokenization import load_clip_tokenizer
    >>> tok = load_clip_tokenizer()
    >>> enc = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, eos_token_id=49407)).eval()
    >>> ids = tokenize(tok, ["a red star"])
    >>> out = encode_from_token_embeds(enc, enc.get_input_embeddings()(ids), ids)
    >>> torch.allclose(out.last_hidden_state, enc(ids).last_hidden_state, atol=1e-5)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "EncodedText",
    "tokenize",
    "encode_from_token_embeds",
    "encode_ids",
    "eos_positions",
    "insert_tokens",
]


@dataclass
class EncodedText:
    """Outputs of a text-encoder pass: what the UNet and SDXL's added conditioning read."""

    last_hidden_state: torch.Tensor  # (B, L, D) after the final layer norm (SD 1.x conditioning)
    penultimate: torch.Tensor | None  # (B, L, D) hidden state before the last layer (SD 2.x / SDXL)
    pooled: torch.Tensor  # (B, D) final-LN state at the end-of-text token
    text_embeds: torch.Tensor | None = None  # (B, P) projected pooled output (CLIPTextModelWithProjection)


def tokenize(tokenizer, prompts: list[str] | str, device=None) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's ``model_max_length`` (as diffusers does)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device) if device is not None else ids


def eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Index of the first end-of-text token in each row."""
    return (input_ids == eos_token_id).int().argmax(dim=-1)


def _text_transformer(text_encoder):
    """The module holding embeddings/encoder/final_layer_norm (transformers 4 nests it in ``text_model``)."""
    return getattr(text_encoder, "text_model", text_encoder)


def encode_from_token_embeds(
    text_encoder,
    token_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    need_penultimate: bool = False,
) -> EncodedText:
    """Run a CLIP text encoder from token embeddings (B, L, D).

    ``input_ids`` only locates the end-of-text token for pooling (and must have the same
    length); the embeddings themselves may be anything, e.g. adversarial soft tokens.
    """
    from transformers.masking_utils import create_causal_mask

    tm = _text_transformer(text_encoder)
    cfg = tm.config
    seq = token_embeds.shape[1]
    pos = tm.embeddings.position_ids[:, :seq]
    hidden = token_embeds + tm.embeddings.position_embedding(pos)
    mask = create_causal_mask(config=cfg, inputs_embeds=hidden, attention_mask=None, past_key_values=None)
    enc = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True, output_hidden_states=need_penultimate)
    last = tm.final_layer_norm(enc.last_hidden_state)
    eos = getattr(cfg, "eos_token_id", None)
    if eos == 2 or eos is None:  # legacy configs: pool at the highest id (the EOT token)
        where = input_ids.to(torch.int).argmax(dim=-1)
    else:
        where = eos_positions(input_ids, eos)
    pooled = last[torch.arange(last.shape[0], device=last.device), where.to(last.device)]
    text_embeds = None
    if hasattr(text_encoder, "text_projection"):
        text_embeds = text_encoder.text_projection(pooled)
    pen = enc.hidden_states[-2] if need_penultimate else None
    return EncodedText(last, pen, pooled, text_embeds)


def encode_ids(text_encoder, input_ids: torch.Tensor, *, need_penultimate: bool = False) -> EncodedText:
    """Same outputs as ``encode_from_token_embeds`` for ordinary token ids."""
    emb = text_encoder.get_input_embeddings()(input_ids)
    return encode_from_token_embeds(text_encoder, emb, input_ids, need_penultimate=need_penultimate)


def insert_tokens(
    input_ids: torch.Tensor, n: int, *, mode: str = "prefix", placeholder_id: int = 0, eos_token_id: int = 49407
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make room for ``n`` adversarial tokens in each prompt.

    Returns the new ids (placeholder id at the adversarial slots; the sequence keeps its
    length, padding is dropped from the end) and a bool mask of the adversarial slots.
    ``mode``: ``prefix`` (right after <bos>), ``suffix`` (right before the first <eos>),
    or ``replace`` (overwrite the first n content tokens).
    """
    if mode not in ("prefix", "suffix", "replace"):
        raise ValueError(f"Unknown adversarial token mode {mode!r}; expected 'prefix', 'suffix' or 'replace'.")
    b, length = input_ids.shape
    out = input_ids.clone()
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for i in range(b):
        row = input_ids[i].tolist()
        if mode == "replace":
            idx = list(range(1, 1 + n))
        else:
            at = 1 if mode == "prefix" else int(eos_positions(input_ids[i : i + 1], eos_token_id)[0])
            row = row[:at] + [placeholder_id] * n + row[at:]
            row = row[:length]
            out[i] = torch.tensor(row)
            idx = list(range(at, at + n))
        for j in idx:
            out[i, j] = placeholder_id
            mask[i, j] = True
    return out, mask
