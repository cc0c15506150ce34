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

import functools
import inspect
from dataclasses import dataclass

import torch

__all__ = [
    "EncodedText",
    "TextEncoderPair",
    "sdxl_time_ids",
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


@functools.cache
def _cache_keyword() -> str:
    """The name ``create_causal_mask`` gives its KV-cache argument (``past_key_values`` was renamed ``cache``)."""
    from transformers.masking_utils import create_causal_mask

    return "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def _causal_mask(cfg, hidden: torch.Tensor):
    """The causal self-attention mask ``CLIPTextTransformer`` builds for ``hidden`` (no padding mask, no cache)."""
    from transformers.masking_utils import create_causal_mask

    return create_causal_mask(config=cfg, inputs_embeds=hidden, attention_mask=None, **{_cache_keyword(): None})


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
    if isinstance(text_encoder, TextEncoderPair):
        return text_encoder.encode_from_token_embeds(token_embeds, input_ids)
    tm = _text_transformer(text_encoder)
    cfg = tm.config
    seq = token_embeds.shape[1]
    pos = tm.embeddings.position_ids[:, :seq]
    hidden = token_embeds + tm.embeddings.position_embedding(pos)
    mask = _causal_mask(cfg, hidden)
    captured: list[torch.Tensor] = []
    hook = None
    if need_penultimate:  # hidden_states[-2] of the HF model = the input of the last layer (transformers 5 only
        # records hidden states at the model level, so capture it here; same value on every version)
        def grab(_module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])

        hook = tm.encoder.layers[-1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        enc = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
    finally:
        if hook is not None:
            hook.remove()
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
    pen = captured[0] if need_penultimate else None
    return EncodedText(last, pen, pooled, text_embeds)


def encode_ids(text_encoder, input_ids: torch.Tensor, *, need_penultimate: bool = False) -> EncodedText:
    """Same outputs as ``encode_from_token_embeds`` for ordinary token ids."""
    emb = text_encoder.get_input_embeddings()(input_ids)
    return encode_from_token_embeds(text_encoder, emb, input_ids, need_penultimate=need_penultimate)


# ----------------------------------------------------------------------------------------------------------------
# SDXL: two encoders seen as one
# ----------------------------------------------------------------------------------------------------------------
def _unwrap(model):
    """The transformers model inside a peft ``PeftModel`` (LoRA layers are injected in place)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


class _JointEmbedding(torch.nn.Module):
    """Token embeddings of both SDXL encoders side by side: (B, L, D1 + D2) for one sequence of token ids.

    ``weight`` is the (V, D1 + D2) concatenation of the two tables (cached while both stay unchanged), so an
    attack's soft token in this space is one soft token per encoder, and a relaxed one-hot picks the *same* real
    token in both (the two SDXL tokenizers share the CLIP BPE vocabulary).
    """

    def __init__(self, pair: TextEncoderPair) -> None:
        super().__init__()
        self._pair = [pair]  # a list: not a registered submodule (no second copy of the parameters)

    @property
    def weight(self) -> torch.Tensor:
        pair = self._pair[0]
        w1 = _unwrap(pair.text_encoder).get_input_embeddings().weight
        w2 = _unwrap(pair.text_encoder_2).get_input_embeddings().weight
        key = (w1.data_ptr(), w1._version, w2.data_ptr(), w2._version, w1.requires_grad or w2.requires_grad)
        if key[-1]:  # trainable embeddings: no cache, keep the graph
            return torch.cat([w1, w2.to(w1.dtype)], -1)
        if pair._weight_cache is None or pair._weight_cache[0] != key:
            pair._weight_cache = (key, torch.cat([w1, w2.to(w1.dtype)], -1).detach())
        return pair._weight_cache[1]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pair = self._pair[0]
        e1 = _unwrap(pair.text_encoder).get_input_embeddings()(input_ids)
        e2 = _unwrap(pair.text_encoder_2).get_input_embeddings()(pair.ids_2(input_ids))
        return torch.cat([e1, e2.to(e1.dtype)], -1)


class TextEncoderPair(torch.nn.Module):
    """SDXL's ``text_encoder`` (CLIPTextModel) and ``text_encoder_2`` (CLIPTextModelWithProjection) as one encoder.

    It encodes exactly like ``StableDiffusionXLPipeline.encode_prompt`` (no clip-skip): the UNet's token
    conditioning is the concatenation of both encoders' *penultimate* hidden states (returned as
    ``last_hidden_state``, (B, L, D1 + D2)), the pooled conditioning is ``text_encoder_2``'s projected pooled output
    (``text_embeds``, (B, P)). Token ids are those of ``tokenizer``; ``text_encoder_2`` reads them re-padded with
    ``pad_token_id_2`` after the first end-of-text token (SDXL's ``tokenizer_2`` pads with ``!``, id 0).

    Everything that takes "a text encoder" in this package (attacks, the trainer, ``encode_ids``) takes a pair:
    ``get_input_embeddings()`` gives (B, L, D1 + D2) joint token embeddings and :func:`encode_from_token_embeds`
    splits them. Either member may be a peft ``PeftModel``.
    """

    def __init__(self, text_encoder, text_encoder_2, *, pad_token_id_2: int | None = None,
                 eos_token_id: int = 49407) -> None:
        super().__init__()
        if not hasattr(_unwrap(text_encoder_2), "text_projection"):
            raise TypeError(
                f"text_encoder_2 must be a CLIPTextModelWithProjection (SDXL feeds its projected pooled output to the "
                f"UNet), got {type(_unwrap(text_encoder_2)).__name__}."
            )
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.pad_token_id_2 = pad_token_id_2
        self.eos_token_id = eos_token_id
        self._weight_cache = None

    @classmethod
    def from_pipeline(cls, pipe) -> TextEncoderPair:
        """The pair of an SDXL pipeline (or any object with ``text_encoder(_2)`` and ``tokenizer(_2)``)."""
        tok2 = getattr(pipe, "tokenizer_2", None)
        tok = getattr(pipe, "tokenizer", None)
        return cls(pipe.text_encoder, pipe.text_encoder_2,
                   pad_token_id_2=getattr(tok2, "pad_token_id", None),
                   eos_token_id=int(getattr(tok, "eos_token_id", None) or 49407))

    @property
    def config(self):
        """The first encoder's config (what code that reads ``encoder.config`` for token ids needs)."""
        return _unwrap(self.text_encoder).config

    @property
    def dtype(self) -> torch.dtype:
        return _unwrap(self.text_encoder).get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return _unwrap(self.text_encoder).get_input_embeddings().weight.device

    def get_input_embeddings(self) -> _JointEmbedding:
        return _JointEmbedding(self)

    @property
    def width_1(self) -> int:
        return int(_unwrap(self.text_encoder).get_input_embeddings().weight.shape[1])

    def ids_2(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` as ``tokenizer_2`` pads them (identical when both tokenizers pad alike)."""
        if self.pad_token_id_2 is None or self.pad_token_id_2 == self.eos_token_id:
            return input_ids
        first = eos_positions(input_ids, self.eos_token_id).unsqueeze(1)
        after = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0) > first
        return input_ids.masked_fill(after, self.pad_token_id_2)

    def encode_from_token_embeds(self, token_embeds: torch.Tensor, input_ids: torch.Tensor) -> EncodedText:
        d1 = self.width_1
        o1 = encode_from_token_embeds(_unwrap(self.text_encoder), token_embeds[..., :d1], input_ids,
                                      need_penultimate=True)
        o2 = encode_from_token_embeds(_unwrap(self.text_encoder_2), token_embeds[..., d1:], self.ids_2(input_ids),
                                      need_penultimate=True)
        hidden = torch.cat([o1.penultimate, o2.penultimate.to(o1.penultimate.dtype)], -1)
        return EncodedText(hidden, hidden, o2.pooled, o2.text_embeds)

    def forward(self, input_ids: torch.Tensor) -> EncodedText:
        return encode_ids(self, input_ids)


def sdxl_time_ids(height: int, width: int, batch: int = 1, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """SDXL's ``time_ids`` (B, 6) for an image of ``height`` x ``width`` with no crop: original size, crop
    top-left (0, 0), target size, as ``StableDiffusionXLPipeline`` builds them by default."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
    return ids.expand(batch, -1)


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
