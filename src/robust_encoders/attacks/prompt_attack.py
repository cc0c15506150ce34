"""Adversarial prompt attacks on a text encoder: continuous soft tokens and discrete real tokens.

``PromptAttack`` adds ``k`` adversarial token slots to each prompt (prefix, suffix, or
replacing the first ``k`` words) and minimises a caller-supplied loss of the encoder's
output over those slots only. The encoder's weights never change and every parameter's
``requires_grad`` flag is restored afterwards, so the trainer can call it between updates.

Modes:

* ``continuous``: the slots hold free embedding vectors (a soft prompt), optimised with Adam
  or with signed gradients ("fast AT", FGSM-style steps of size ``lr``), optionally kept in
  an L-inf ball of radius ``eps`` around their initial value. This is AdvUnlearn's attack
  and an upper bound no real prompt can exceed. Unbounded soft tokens drift far from every
  real token (on the miniature model to norms ~10x the largest token embedding);
  ``bound='vocab'`` keeps each slot inside the vocabulary's hull (the bounding box of all
  token embeddings, then the ball of the largest token norm), which still holds every real
  token, so it stays an upper bound on real prompts, only a tighter one.
* ``discrete``: UnlearnDiffAtk-style. Each slot holds a distribution over the vocabulary
  (a point on the probability simplex, restricted to tokens that survive a decode/re-tokenise
  round trip); its embedding is the distribution times the embedding matrix. After each
  optimiser step the distribution is projected back onto the simplex. At the end (and every
  ``project_every`` steps) the distributions are projected to their most likely real tokens;
  the best real tokens seen are returned together with the decoded prompts.
* ``gcg``: real tokens throughout, searched by greedy coordinate gradient
  (:class:`~robust_encoders.attacks.token_search.TokenSearch`): each step proposes ``candidates``
  single-slot swaps per prompt among the ``topk`` tokens the relaxed one-hot's gradient favours,
  scores them exactly and keeps the best. The evaluation's UnlearnDiffAtk searches this way; as
  an inner training attack it puts the encoder against the adversary of the real-token threat.

Example:
    >>> import torch
    >>> from transformers import CLIPTextConfig, CLIPTextModel
    >>> from robust_encoders.attacks import PromptAttack, PromptAttackConfig
    >>> from robust_encoders.tokenization import load_clip_tokenizer
    >>> tok = load_clip_tokenizer()
    >>> enc = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, eos_token_id=49407)).eval()
    >>> target = torch.randn(32)
    >>> attack = PromptAttack(enc, tok, PromptAttackConfig(steps=20, lr=0.05, k=2))
    >>> res = attack.run(["a red star"], lambda out: ((out.pooled - target) ** 2).mean())
    >>> res.losses[-1] < res.losses[0]
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import torch

from ..core.text import EncodedText, encode_from_token_embeds, insert_tokens, tokenize
from .tokens import decode_ids, safe_token_ids

__all__ = [
    "AttackResult",
    "AttackState",
    "PromptAttack",
    "PromptAttackConfig",
    "VocabHull",
    "project_to_simplex",
]

AttackMode = Literal["continuous", "discrete", "gcg"]
Position = Literal["prefix", "suffix", "replace"]
OptimizerName = Literal["adam", "sign"]
InitName = Literal["random", "warm", "token"]
BoundName = Literal["none", "vocab"]


@dataclass
class PromptAttackConfig:
    """Settings of one adversarial prompt attack (see the module docstring)."""

    mode: AttackMode = field(
        default="continuous",
        metadata={"help": "'continuous' (free soft-token embeddings), 'discrete' (relaxed one-hot over real tokens, "
                  "projected at the end) or 'gcg' (greedy coordinate gradient search over real tokens)."},
    )
    steps: int = field(default=30, metadata={"help": "Optimisation steps per attack."})
    lr: float = field(
        default=1e-3,
        metadata={"help": "Step size (Adam learning rate, or the signed-gradient step for optimizer='sign')."},
    )
    k: int = field(default=1, metadata={"help": "Number of adversarial token slots per prompt."})
    position: Position = field(
        default="prefix",
        metadata={"help": "Where the slots go: 'prefix' (after <bos>), 'suffix' (before <eos>), 'replace' (first k words)."},
    )
    optimizer: OptimizerName = field(
        default="adam", metadata={"help": "'adam' or 'sign' (signed-gradient 'fast AT' steps of size lr)."}
    )
    init: InitName = field(
        default="random",
        metadata={
            "help": "'random' (random embedding / random distribution), 'token' (random real tokens), "
            "'warm' (continue from the AttackState passed to run(); random when there is none)."
        },
    )
    eps: float | None = field(
        default=None,
        metadata={"help": "L-inf radius around the initial embeddings (continuous mode only); None = unbounded."},
    )
    bound: BoundName = field(
        default="none",
        metadata={
            "help": "Continuous mode: 'none' (free embeddings) or 'vocab' (after every step, clamp each slot to the "
            "bounding box of all token embeddings, then into the ball of the largest token norm: a set that holds "
            "every real token, so the attack still bounds real prompts from above)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random initialisation."})
    project_every: int = field(
        default=0,
        metadata={
            "help": "Discrete mode: also project to real tokens every N steps and keep the best tokens seen "
            "(0 = only at the end)."
        },
    )
    candidates: int = field(
        default=16, metadata={"help": "mode='gcg': single-slot token swaps scored per prompt and step."}
    )
    topk: int = field(
        default=64, metadata={"help": "mode='gcg': most promising tokens per slot (by gradient) to draw swaps from."}
    )
    eval_batch: int = field(
        default=64,
        metadata={
            "help": "mode='gcg': candidate prompts scored per loss_fn call (no gradients, so independent of "
            "micro_batch; lower it only if one forward pass of this many sequences does not fit)."
        },
    )
    micro_batch: int = field(
        default=0,
        metadata={
            "help": "Back-propagate each step's loss in chunks of this many prompts (the gradient is the same; only "
            "one chunk's activations are alive at a time). 0 = the whole batch at once. Needs a per-prompt loss_fn "
            "that accepts rows= (see PromptAttack.run)."
        },
    )
    score_final: bool = field(
        default=True,
        metadata={
            "help": "Continuous mode: score the returned prompt with one more loss_fn pass (AttackResult.sample_losses). "
            "A caller that runs that forward pass anyway (the trainer's update) sets False and saves it."
        },
    )

    def __post_init__(self) -> None:
        choices = {
            "mode": ("continuous", "discrete", "gcg"),
            "position": ("prefix", "suffix", "replace"),
            "optimizer": ("adam", "sign"),
            "init": ("random", "warm", "token"),
            "bound": ("none", "vocab"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"PromptAttackConfig.{name}={value!r} is not valid; choose one of {allowed}.")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"PromptAttackConfig.steps must be an integer >= 0, got {self.steps!r}.")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"PromptAttackConfig.k must be an integer >= 1 (number of adversarial tokens), got {self.k!r}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"PromptAttackConfig.lr must be a positive number, got {self.lr!r}.")
        if self.eps is not None:
            if not (isinstance(self.eps, (int, float)) and self.eps > 0):
                raise ValueError(f"PromptAttackConfig.eps must be a positive number or None (unbounded), got {self.eps!r}.")
            if self.mode != "continuous":
                raise ValueError(
                    f"PromptAttackConfig.eps bounds continuous embeddings; a {self.mode} attack only uses real "
                    f"tokens and has no eps. Use eps=None with mode='{self.mode}'."
                )
        if not isinstance(self.project_every, int) or self.project_every < 0:
            raise ValueError(f"PromptAttackConfig.project_every must be an integer >= 0, got {self.project_every!r}.")
        if not isinstance(self.micro_batch, int) or self.micro_batch < 0:
            raise ValueError(f"PromptAttackConfig.micro_batch must be an integer >= 0, got {self.micro_batch!r}.")
        if self.bound != "none" and self.mode != "continuous":
            raise ValueError(
                f"PromptAttackConfig.bound limits continuous embeddings; a {self.mode} attack only uses real tokens. "
                f"Use bound='none' with mode='{self.mode}'."
            )
        for name in ("candidates", "topk", "eval_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PromptAttackConfig.{name} must be an integer >= 1, got {value!r}.")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help string (for CLIs and recipe documentation)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


@dataclass
class AttackState:
    """What a later attack round needs to warm-start: the adversarial variables.

    ``variable`` is (B, k, D) embeddings in continuous mode, (B, k, V') distributions over
    the ``vocab_ids`` (V' round-trip-safe tokens) in discrete mode, or the (B, k) token ids
    found in gcg mode.
    """

    mode: str
    variable: torch.Tensor
    vocab_ids: torch.Tensor | None = None
    rounds: int = 1


@dataclass
class AttackResult:
    """Outcome of :meth:`PromptAttack.run`.

    ``token_embeds`` is the full (B, L, D) token-embedding sequence (detached) with the
    adversarial slots filled in; feed it with ``input_ids`` to ``encode_from_token_embeds``.
    ``input_ids`` carries placeholders at the slots (``adv_mask``). Discrete attacks also give
    the real tokens (``adv_token_ids``, (B, k)) and the decoded prompts (``texts``), which
    tokenise back to exactly ``token_embeds``. ``losses`` is the mean loss per step;
    ``sample_losses`` the (B,) loss of what is returned (None for a continuous attack run with
    ``score_final=False``).
    """

    token_embeds: torch.Tensor
    input_ids: torch.Tensor
    adv_mask: torch.Tensor
    adv_token_ids: torch.Tensor | None
    texts: list[str] | None
    losses: list[float]
    state: AttackState
    sample_losses: torch.Tensor | None = None

    @property
    def real_input_ids(self) -> torch.Tensor | None:
        """``input_ids`` with the adversarial tokens filled in (discrete mode), else None."""
        if self.adv_token_ids is None:
            return None
        out = self.input_ids.clone()
        out[self.adv_mask] = self.adv_token_ids.to(out.device).reshape(-1)
        return out


def project_to_simplex(v: torch.Tensor, *, support_hint: int = 256) -> torch.Tensor:
    """Euclidean projection of each row (last dim) onto the probability simplex (Duchi et al. 2008).

    The threshold only depends on the entries that stay positive, so it is first computed from
    the ``support_hint`` largest entries (a cheap ``topk``); rows whose support may be larger fall
    back to a full sort. The result is exact either way.
    """
    n = v.shape[-1]

    def threshold(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        css = u.cumsum(-1) - 1
        ind = torch.arange(1, u.shape[-1] + 1, device=v.device, dtype=v.dtype)
        cond = (u - css / ind) > 0
        rho = cond.sum(-1, keepdim=True).clamp(min=1)
        return css.gather(-1, rho - 1) / rho.to(v.dtype), rho

    m = min(n, support_hint)
    top = torch.topk(v, m, dim=-1).values if m < n else torch.sort(v, dim=-1, descending=True).values
    theta, rho = threshold(top)
    if m < n:
        full = (rho == m).squeeze(-1)  # support may extend past the top-m entries: redo those rows exactly
        if bool(full.any()):
            theta = theta.clone()
            theta[full] = threshold(torch.sort(v[full], dim=-1, descending=True).values)[0]
    return (v - theta).clamp(min=0)


class VocabHull:
    """A convex set holding every row of an embedding matrix: its bounding box cut by the ball of its largest norm.

    ``project`` maps a point into the set: clamp to the box, then scale towards the origin into the
    ball. Scaling keeps the point in the box only when the box holds the origin (it does whenever the
    embeddings surround it, as trained and random-init ones do); otherwise only the box applies.

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -1.0]])
        >>> hull = VocabHull(w)  # box [-1, 1] x [-1, 0.5], radius 1
        >>> [round(v, 4) for v in hull.project(torch.tensor([[3.0, 3.0]]))[0].tolist()]  # (1, 0.5) scaled to norm 1
        [0.8944, 0.4472]
        >>> bool(torch.equal(hull.project(w), w))
        True
    """

    def __init__(self, weight: torch.Tensor) -> None:
        w = weight.detach().float()
        self.low, self.high = w.min(0).values, w.max(0).values
        self.radius = float(w.norm(dim=-1).max())
        self._origin_inside = bool((self.low <= 0).all() and (self.high >= 0).all())

    def project(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.low.to(x.device, x.dtype), self.high.to(x.device, x.dtype)
        x = torch.max(torch.min(x, high), low)
        if self._origin_inside:
            norm = x.norm(dim=-1, keepdim=True)
            x = x * (self.radius / norm.clamp(min=self.radius))
        return x


def _per_sample(loss: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scalar to differentiate, per-sample losses or None)."""
    if loss.dim() == 0:
        return loss, None
    if loss.shape == (batch,):
        return loss.sum(), loss
    raise ValueError(
        f"loss_fn must return a scalar or one loss per prompt (shape ({batch},)), got shape {tuple(loss.shape)}."
    )


class PromptAttack:
    """Optimise ``k`` adversarial token slots per prompt to minimise ``loss_fn(encoder output)``.

    Args:
        text_encoder: a CLIP text encoder (``CLIPTextModel`` / ``...WithProjection``); not modified.
        tokenizer: its tokenizer (pads to ``model_max_length`` as diffusers does).
        config: :class:`PromptAttackConfig`.
        need_penultimate: pass ``need_penultimate=True`` to the encoder pass (SD 2.x / SDXL losses).
        vocab_ids: discrete mode: the token ids the attack may use (default: every token that
            survives a decode/re-tokenise round trip, special tokens excluded).
    """

    def __init__(
        self,
        text_encoder,
        tokenizer,
        config: PromptAttackConfig | None = None,
        *,
        need_penultimate: bool = False,
        vocab_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.config = config if config is not None else PromptAttackConfig()
        if not isinstance(self.config, PromptAttackConfig):
            raise TypeError(f"config must be a PromptAttackConfig, got {type(self.config).__name__}.")
        self.need_penultimate = need_penultimate
        self._vocab_ids = None if vocab_ids is None else torch.as_tensor(vocab_ids, dtype=torch.long)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_id = int(eos) if eos is not None else 49407

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def vocab_ids(self) -> torch.Tensor:
        """Token ids a discrete attack may choose from."""
        if self._vocab_ids is None:
            self._vocab_ids = safe_token_ids(self.tokenizer)
        return self._vocab_ids

    def _embedding_matrix(self) -> torch.Tensor:
        return self.text_encoder.get_input_embeddings().weight

    def prepare(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids with ``k`` placeholder slots, the slot mask, and the base token embeddings."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise ValueError("PromptAttack.run needs at least one prompt.")
        weight = self._embedding_matrix()
        ids = tokenize(self.tokenizer, list(prompts)).to(weight.device)
        lengths = (ids == self.eos_token_id).int().argmax(-1)
        room = ids.shape[1] - 1 - lengths
        if self.config.position != "replace" and bool((room < self.config.k).any()):
            bad = [p for p, r in zip(prompts, room.tolist(), strict=True) if r < self.config.k]
            raise ValueError(
                f"{len(bad)} prompt(s) leave no room for {self.config.k} adversarial tokens within "
                f"{ids.shape[1]} tokens (e.g. {bad[0][:60]!r}...); shorten them or lower k."
            )
        if self.config.position == "replace" and bool((lengths - 1 < self.config.k).any()):
            raise ValueError(
                f"position='replace' overwrites the first k={self.config.k} words, but a prompt has fewer "
                "tokens than that; use position='prefix' or a smaller k."
            )
        adv_ids, mask = insert_tokens(ids, self.config.k, mode=self.config.position, eos_token_id=self.eos_token_id)
        with torch.no_grad():
            base = self.text_encoder.get_input_embeddings()(adv_ids).float()
        return adv_ids, mask, base

    def _encode(self, base: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, ids: torch.Tensor) -> EncodedText:
        dtype = self._embedding_matrix().dtype
        emb = base.clone()
        emb[mask] = adv.reshape(-1, adv.shape[-1]).to(emb.dtype)
        return encode_from_token_embeds(self.text_encoder, emb.to(dtype), ids, need_penultimate=self.need_penultimate)

    def _init_variable(self, batch: int, state: AttackState | None, gen: torch.Generator) -> tuple[torch.Tensor, bool]:
        cfg = self.config
        if cfg.init == "warm" and state is not None and state.mode != cfg.mode:
            raise ValueError(f"Cannot warm-start a {cfg.mode} attack from a {state.mode} AttackState; use init='random'.")
        weight = self._embedding_matrix().detach().float()
        dev = weight.device
        if cfg.init == "warm" and state is not None:
            var = state.variable.detach().to(dev)
            var = var.long() if cfg.mode == "gcg" else var.float()  # gcg keeps token ids
            compatible = var.shape[1] == cfg.k and (
                cfg.mode == "continuous" or (state.vocab_ids is not None and torch.equal(state.vocab_ids.cpu(), self.vocab_ids))
            )
            if compatible:
                if var.shape[0] != batch:  # a different batch of prompts: reuse rows cyclically
                    var = var[torch.arange(batch, device=dev) % var.shape[0]]
                return var.clone(), True
        if cfg.mode == "continuous":
            if cfg.init == "token":
                pool = self.vocab_ids.to(dev)
                pick = pool[torch.randint(len(pool), (batch, cfg.k), generator=gen).to(dev)]
                return weight[pick].clone(), False
            mean, std = weight.mean(0), weight.std(0)
            noise = torch.randn(batch, cfg.k, weight.shape[1], generator=gen).to(dev)
            return mean + std * noise, False
        n = len(self.vocab_ids)
        if cfg.mode == "gcg":  # random real tokens whatever the init (a relaxed start has no meaning for real tokens)
            return self.vocab_ids.to(dev)[torch.randint(n, (batch, cfg.k), generator=gen).to(dev)], False
        if cfg.init == "token":
            pick = torch.randint(n, (batch, cfg.k), generator=gen).to(dev)
            return torch.nn.functional.one_hot(pick, n).float(), False
        return project_to_simplex(torch.rand(batch, cfg.k, n, generator=gen).to(dev) / n * 2), False

    # -- the attack --------------------------------------------------------------------------------
    def run(
        self,
        prompts: list[str],
        loss_fn: Callable[[EncodedText], torch.Tensor],
        state: AttackState | None = None,
    ) -> AttackResult:
        """Minimise ``loss_fn(encode_from_token_embeds(encoder, embeds, input_ids))`` over the slots.

        ``loss_fn`` returns a scalar or one loss per prompt (the per-prompt form lets discrete
        mode keep the best tokens of each prompt separately). ``state`` warm-starts from an
        earlier round when ``config.init == 'warm'``. With ``config.micro_batch`` the gradient
        steps encode and back-propagate the prompts a chunk at a time and call
        ``loss_fn(encoded, rows=slice)``, ``rows`` saying which prompts the chunk holds; the loss
        must then be per prompt. In ``gcg`` mode ``loss_fn`` is always called with ``rows=`` a LongTensor
        (one prompt index per encoded sequence, repeated for the candidates of a prompt) and must return one loss
        per sequence.
        """
        cfg = self.config
        params = list(self.text_encoder.parameters())
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                if cfg.mode == "continuous":
                    return self._run_continuous(prompts, loss_fn, state)
                if cfg.mode == "gcg":
                    return self._run_gcg(prompts, loss_fn, state)
                return self._run_discrete(prompts, loss_fn, state)
        finally:
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)

    def _backward(self, base, mask, ids, adv_of: Callable[[slice], torch.Tensor], loss_fn) -> float:
        """One gradient step's loss, back-propagated into the attack variable (``adv_of(rows)`` gives the slots of
        prompts ``rows``): the whole batch at once, or ``config.micro_batch`` prompts at a time (gradients add up to
        the same sum). Returns the mean loss per prompt (or the scalar loss)."""
        b = ids.shape[0]
        m = self.config.micro_batch
        if not m or m >= b:
            total, per = _per_sample(loss_fn(self._encode(base, mask, adv_of(slice(0, b)), ids)), b)
            total.backward()
            return float(total.detach()) / (b if per is not None else 1)
        total = 0.0
        for start in range(0, b, m):
            rows = slice(start, min(b, start + m))
            n = rows.stop - rows.start
            loss = loss_fn(self._encode(base[rows], mask[rows], adv_of(rows), ids[rows]), rows=rows)
            if loss.shape != (n,):
                raise ValueError(
                    f"PromptAttackConfig.micro_batch={m} needs one loss per prompt of the chunk (shape ({n},)), got "
                    f"shape {tuple(loss.shape)}; return per-prompt losses or set micro_batch=0."
                )
            loss.sum().backward()
            total += float(loss.detach().sum())
        return total / b

    def _step(self, var: torch.Tensor, opt: torch.optim.Optimizer | None) -> None:
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                var -= self.config.lr * var.grad.sign()
            var.grad = None

    def _run_continuous(self, prompts, loss_fn, state) -> AttackResult:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        ids, mask, base = self.prepare(prompts)
        b = ids.shape[0]
        init, warm = self._init_variable(b, state, gen)
        anchor = init.clone()
        var = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([var], lr=cfg.lr) if cfg.optimizer == "adam" else None
        hull = VocabHull(self._embedding_matrix()) if cfg.bound == "vocab" else None

        @torch.no_grad()
        def constrain() -> None:  # the eps ball around the start, then the vocabulary hull
            if cfg.eps is not None:
                var.copy_(torch.max(torch.min(var, anchor + cfg.eps), anchor - cfg.eps))
            if hull is not None:
                var.copy_(hull.project(var))

        constrain()
        losses: list[float] = []
        for _ in range(cfg.steps):
            losses.append(self._backward(base, mask, ids, lambda rows: var[rows], loss_fn))
            self._step(var, opt)
            constrain()
        adv = var.detach()
        sample = None
        with torch.no_grad():
            if cfg.score_final:
                final = loss_fn(self._encode(base, mask, adv, ids))
                sample = final.detach().reshape(-1).float() if final.dim() > 0 else None
            emb = base.clone()
            emb[mask] = adv.reshape(-1, adv.shape[-1])
        rounds = (state.rounds + 1) if (warm and state is not None) else 1
        return AttackResult(
            token_embeds=emb.to(self._embedding_matrix().dtype).detach(),
            input_ids=ids,
            adv_mask=mask,
            adv_token_ids=None,
            texts=None,
            losses=losses,
            state=AttackState("continuous", adv.clone(), None, rounds),
            sample_losses=sample,
        )

    def _hard_loss(self, base, mask, ids, token_idx, weight, loss_fn) -> torch.Tensor:
        """Per-sample loss (B,) of real tokens ``vocab_ids[token_idx]``."""
        b = ids.shape[0]
        with torch.no_grad():
            adv = weight[self.vocab_ids.to(weight.device)[token_idx]]
            out = loss_fn(self._encode(base, mask, adv, ids)).detach().float()
        return out.reshape(-1) if out.dim() > 0 else out.expand(b)

    def _run_discrete(self, prompts, loss_fn, state) -> AttackResult:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        ids, mask, base = self.prepare(prompts)
        b = ids.shape[0]
        weight = self._embedding_matrix().detach().float()
        vocab = self.vocab_ids.to(weight.device)
        sub = weight[vocab]  # (V', D)
        init, warm = self._init_variable(b, state, gen)
        var = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([var], lr=cfg.lr) if cfg.optimizer == "adam" else None
        losses: list[float] = []
        best_idx: torch.Tensor | None = None
        best_loss = torch.full((b,), float("inf"), device=weight.device)
        per_sample_ok = True

        def consider(idx: torch.Tensor) -> None:
            nonlocal best_idx, best_loss, per_sample_ok
            hard = self._hard_loss(base, mask, ids, idx, weight, loss_fn)
            if best_idx is None:
                best_idx, best_loss = idx.clone(), hard
                return
            better = hard < best_loss
            best_idx[better] = idx[better]
            best_loss = torch.where(better, hard, best_loss)

        for step in range(cfg.steps):
            losses.append(self._backward(base, mask, ids, lambda rows: var[rows] @ sub, loss_fn))
            self._step(var, opt)
            with torch.no_grad():
                var.copy_(project_to_simplex(var))
            if cfg.project_every and (step + 1) % cfg.project_every == 0 and step + 1 < cfg.steps:
                consider(var.detach().argmax(-1))
        consider(var.detach().argmax(-1))
        assert best_idx is not None
        tok_ids = vocab[best_idx]  # (B, k)
        real = ids.clone()
        real[mask] = tok_ids.reshape(-1)
        with torch.no_grad():
            emb = self.text_encoder.get_input_embeddings()(real)
        texts = [decode_ids(self.tokenizer, row) for row in real]
        rounds = (state.rounds + 1) if (warm and state is not None) else 1
        return AttackResult(
            token_embeds=emb.detach(),
            input_ids=ids,
            adv_mask=mask,
            adv_token_ids=tok_ids.detach(),
            texts=texts,
            losses=losses,
            state=AttackState("discrete", var.detach().clone(), self.vocab_ids.clone(), rounds),
            sample_losses=best_loss.detach(),
        )

    def _run_gcg(self, prompts, loss_fn, state) -> AttackResult:
        """``steps`` rounds of :class:`TokenSearch`; ``loss_fn(encoded, rows=LongTensor)`` scores sequences whose
        prompt indices are ``rows`` (candidates of one prompt repeat its index)."""
        from .token_search import TokenSearch, TokenSearchConfig

        cfg = self.config
        vocab = self.vocab_ids
        init, warm = self._init_variable(len(prompts), state, torch.Generator().manual_seed(cfg.seed))
        search = TokenSearch(
            self.text_encoder, self.tokenizer, list(prompts),
            TokenSearchConfig(k=cfg.k, candidates=cfg.candidates, topk=cfg.topk, position=cfg.position,
                              seed=cfg.seed, eval_batch=cfg.eval_batch),
            vocab_ids=vocab, init_tokens=init,
        )

        def row_loss(out: EncodedText, rows: torch.Tensor) -> torch.Tensor:
            return loss_fn(out, rows=rows).reshape(-1)

        losses = [float(search.step(row_loss).float().mean()) for _ in range(cfg.steps)]
        real = search.input_ids
        with torch.no_grad():
            emb = self.text_encoder.get_input_embeddings()(real)
        rounds = (state.rounds + 1) if (warm and state is not None) else 1
        return AttackResult(
            token_embeds=emb.detach(),
            input_ids=search.ids,
            adv_mask=search.mask,
            adv_token_ids=search.tokens.detach().clone(),
            texts=search.texts,
            losses=losses,
            state=AttackState("gcg", search.tokens.detach().cpu().clone(), vocab.cpu().clone(), rounds),
            sample_losses=None if search.losses is None else search.losses.detach(),
        )
