"""Greedy coordinate gradient search over real tokens (GCG-style), for strong discrete attacks.

The relaxed one-hot of :class:`~robust_encoders.attacks.PromptAttack` gives, at the current real
tokens, the gradient of the loss with respect to every vocabulary entry of every adversarial
slot. :class:`TokenSearch` uses it as GCG does (Zou et al. 2023; AutoPrompt before it): each step
proposes ``candidates`` single-slot swaps per prompt among the ``topk`` most promising tokens,
evaluates the *exact* loss of every candidate under the same random draws (common random
numbers, so the comparison is fair even for a noisy diffusion loss), and moves to the best. The
search never leaves real tokens, so what it returns is exactly what a user could type.

Losses are :class:`RowLoss` objects: ``loss(out, rows)`` gives one value per encoded sequence,
``rows[i]`` naming the prompt sequence ``i`` belongs to, and ``resample()`` draws new randomness
for the next step.

Example:
    >>> import torch
    >>> from transformers import CLIPTextConfig, CLIPTextModel
    >>> from robust_encoders.attacks.token_search import TokenSearch, TokenSearchConfig
    >>> from robust_encoders.tokenization import load_clip_tokenizer
    >>> enc = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, eos_token_id=49407)).eval()
    >>> goal = torch.randn(32)
    >>> loss = lambda out, rows: ((out.pooled - goal) ** 2).mean(-1)
    >>> search = TokenSearch(enc, load_clip_tokenizer(), ["a red star"], TokenSearchConfig(k=2, candidates=8))
    >>> first = float(search.step(loss)[0])
    >>> later = min(float(search.step(loss)[0]) for _ in range(5))
    >>> later <= first
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..core.text import EncodedText, encode_from_token_embeds
from .prompt_attack import PromptAttack, PromptAttackConfig
from .tokens import decode_ids

__all__ = ["RowLoss", "TokenSearch", "TokenSearchConfig"]


class RowLoss(Protocol):
    """A loss over encoded sequences that may repeat prompts (candidates of the same prompt)."""

    def __call__(self, out: EncodedText, rows: torch.Tensor) -> torch.Tensor:
        """(N,) loss of each sequence; ``rows`` (N,) gives each sequence's prompt index."""
        ...


@dataclass
class TokenSearchConfig:
    """Settings of the greedy coordinate gradient search."""

    k: int = field(default=3, metadata={"help": "Adversarial token slots per prompt."})
    candidates: int = field(default=16, metadata={"help": "Single-slot swaps evaluated per prompt and step."})
    topk: int = field(default=64, metadata={"help": "Most promising tokens per slot (by gradient) to swap in."})
    position: str = field(default="prefix", metadata={"help": "prefix | suffix | replace."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial tokens and of the proposals."})
    eval_batch: int = field(default=64, metadata={"help": "Sequences per loss evaluation (memory knob)."})

    def __post_init__(self) -> None:
        for name in ("k", "candidates", "topk", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"TokenSearchConfig.{name} must be >= 1, got {getattr(self, name)}.")
        PromptAttackConfig(position=self.position)


class TokenSearch:
    """GCG over ``k`` adversarial slots of each prompt; real tokens throughout.

    ``step(loss)`` runs one proposal/evaluation round and returns the (B,) losses of the current
    tokens; ``keep(rows)`` drops prompts that are done (e.g. already broken); ``texts`` are the
    current adversarial prompts, decoded.
    """

    def __init__(self, text_encoder, tokenizer, prompts: Sequence[str], config: TokenSearchConfig | None = None, *,
                 vocab_ids: torch.Tensor | None = None, init_tokens: torch.Tensor | None = None) -> None:
        self.config = cfg = config or TokenSearchConfig()
        self.encoder = text_encoder
        self.tokenizer = tokenizer
        helper = PromptAttack(text_encoder, tokenizer, PromptAttackConfig(k=cfg.k, position=cfg.position),
                              vocab_ids=vocab_ids)
        self.vocab = helper.vocab_ids.to(self._weight.device)
        self.ids, self.mask, _ = helper.prepare(list(prompts))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        b = self.ids.shape[0]
        if init_tokens is not None:
            pos = torch.searchsorted(self.vocab.cpu(), init_tokens.cpu())
            if init_tokens.shape != (b, cfg.k) or not torch.equal(self.vocab.cpu()[pos.clamp(max=len(self.vocab) - 1)],
                                                                    init_tokens.cpu()):
                raise ValueError("init_tokens must be (B, k) ids from the search vocabulary.")
            self.cur = pos.to(self._weight.device)
        else:
            self.cur = torch.randint(len(self.vocab), (b, cfg.k), generator=self.gen).to(self._weight.device)
        self.losses: torch.Tensor | None = None

    @property
    def _weight(self) -> torch.Tensor:
        return self.encoder.get_input_embeddings().weight

    @property
    def batch(self) -> int:
        return int(self.ids.shape[0])

    @property
    def tokens(self) -> torch.Tensor:
        """Current adversarial token ids (B, k)."""
        return self.vocab[self.cur]

    @property
    def input_ids(self) -> torch.Tensor:
        """Full token ids with the adversarial tokens in place (B, L)."""
        out = self.ids.clone()
        out[self.mask] = self.tokens.reshape(-1)
        return out

    @property
    def texts(self) -> list[str]:
        """Current adversarial prompts as text (they tokenise back to ``input_ids``)."""
        return [decode_ids(self.tokenizer, row) for row in self.input_ids]

    def keep(self, rows: Sequence[int]) -> None:
        """Continue with prompts ``rows`` only (indices into the current batch)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.ids.device)
        self.ids, self.mask, self.cur = self.ids[idx], self.mask[idx], self.cur[idx]
        if self.losses is not None:
            self.losses = self.losses[idx]

    def _encode(self, tok_idx: torch.Tensor, rows: torch.Tensor, adv: torch.Tensor | None = None) -> EncodedText:
        """Encode the prompts ``rows`` with the adversarial tokens ``tok_idx`` (or their embeddings ``adv``)."""
        weight = self._weight
        emb = weight[self.ids[rows]]
        if adv is None:
            adv = weight[self.vocab[tok_idx]]
        emb = emb.clone()
        emb[self.mask[rows]] = adv.reshape(-1, weight.shape[1])
        return encode_from_token_embeds(self.encoder, emb, self.ids[rows])

    def token_gradient(self, loss: RowLoss) -> torch.Tensor:
        """(B, k, V) gradient of the summed loss with respect to a one-hot choice of each slot's token.

        It is <dL/de, w_v> for every searchable token v: the loss is back-propagated into the (B, k, d) slot
        embeddings only and the vocabulary scored with one matmul, instead of a one-hot (B, k, V) leaf, its
        gradient and a copy of the embedding table in the autograd graph (same numbers, less memory).
        """
        rows = torch.arange(self.batch, device=self.ids.device)
        params = list(self.encoder.parameters())
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                adv = self._weight[self.vocab[self.cur]].detach().requires_grad_(True)
                loss(self._encode(self.cur, rows, adv), rows).sum().backward()
            return (adv.grad @ self._weight.detach().T)[..., self.vocab]
        finally:
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)

    def step(self, loss: RowLoss) -> torch.Tensor:
        """One GCG round; returns the (B,) losses of the tokens kept."""
        cfg = self.config
        b, k, v = self.batch, cfg.k, len(self.vocab)
        rows = torch.arange(b, device=self.ids.device)
        grad = self.token_gradient(loss)
        top = (-grad).topk(min(cfg.topk, v), dim=-1).indices  # (B, k, topk)
        c = cfg.candidates
        slot = torch.randint(k, (c, b), generator=self.gen).to(top.device)
        pick = torch.randint(top.shape[-1], (c, b), generator=self.gen).to(top.device)
        brow = rows.unsqueeze(0).expand(c, b)
        cand = self.cur.unsqueeze(0).repeat(c, 1, 1)
        cand[torch.arange(c, device=top.device).unsqueeze(1), brow, slot] = top[brow, slot, pick]
        cand = torch.cat([self.cur.unsqueeze(0), cand]).reshape(-1, k)  # row r * b + j is prompt j
        all_rows = rows.repeat(c + 1)
        values = []
        with torch.no_grad():
            for s in range(0, len(cand), cfg.eval_batch):
                part = slice(s, s + cfg.eval_batch)
                values.append(loss(self._encode(cand[part], all_rows[part]), all_rows[part]).float())
        scores = torch.cat(values).view(c + 1, b)
        best = scores.argmin(0)
        self.cur = cand.view(c + 1, b, k)[best, rows]
        self.losses = scores[best, rows]
        return self.losses
