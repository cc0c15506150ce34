"""Trainer options from the concept-erasure literature, as mechanisms the trainer calls through a few hooks.

=================  =========================  ================================================================
option             config keys                mechanism
=================  =========================  ================================================================
AdvAnchor          ``anchor.*``               :class:`AdversarialAnchor`: a universal, bounded perturbation of
                                              the concept's token embeddings; the anchor ``E0(tokens(c)+delta)``
                                              replaces ``''`` in the unlearning target.
RealEra            ``neighbors.*``            :func:`mine_neighbors`: perturbations in a cosine band are erased,
                                              those below it are kept.
DoCo               ``optim.grad_surgery``     :func:`project_conflicting`: per tensor, the forget gradient loses
                                              its component along a conflicting retain gradient.
TRCE               ``token_focus.*``          :func:`eot_mapping_loss`: an encoder-space term at the [EoT]
                                              position(s), towards a safe prompt.
RECE-style attack  ``attack.mode=derived``    :func:`derive_embeddings`: concept-token embeddings that make the
                                              current encoder reproduce the original encoder's output.
=================  =========================  ================================================================

The functions are pure tensor code (unit-tested on their own); :class:`TrainerOptions` wires them to a
:class:`~robust_encoders.training.trainer.Trainer`. Everything random draws from generators derived from the run's
seed and the step, so a resumed run stays bit-identical (the anchor's ``delta`` is saved in the checkpoints).

Example:
    >>> import torch
    >>> from robust_encoders.training.options import project_conflicting
    >>> gf = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])]
    >>> gr = [torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 0.0])]
    >>> out, n = project_conflicting(gf, gr)
    >>> [t.tolist() for t in out], n
    ([[0.5, 0.5], [1.0, 1.0]], 1)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..core.diffusion import predict_eps
from ..core.text import encode_from_token_embeds, eos_positions, tokenize
from .config import ConfigError
from .sampling import derive_seed, derived_generator

__all__ = [
    "AdversarialAnchor",
    "TrainerOptions",
    "concept_positions",
    "derive_embeddings",
    "eot_mapping_loss",
    "mine_neighbors",
    "neighbor_offsets",
    "place_rows",
    "project_conflicting",
]


# ----------------------------------------------------------------------------------------------------------------
# concept tokens
# ----------------------------------------------------------------------------------------------------------------
def concept_positions(input_ids: torch.Tensor, word_ids: Sequence[Sequence[int]]) -> list[tuple[list[int], int]]:
    """Per row of ``input_ids``: (positions of the first concept word found, index of that word in ``word_ids``).

    ``word_ids`` lists candidate token sequences (the concept's text and synonyms, longest first); a row without
    any gets ``([], -1)``.
    """
    out = []
    for row in input_ids.tolist():
        found: tuple[list[int], int] = ([], -1)
        for w, ids in enumerate(word_ids):
            n = len(ids)
            hit = next((i for i in range(len(row) - n + 1) if row[i:i + n] == list(ids)), None)
            if n and hit is not None:
                found = (list(range(hit, hit + n)), w)
                break
        out.append(found)
    return out


def place_rows(embeds: torch.Tensor, positions: Sequence[Sequence[int]], rows: torch.Tensor, *, add: bool) -> torch.Tensor:
    """``embeds`` (B, L, D) with the concept positions of each row replaced by (or shifted by) ``rows`` (T, D).

    Token ``j`` of a concept word uses row ``min(j, T - 1)``; differentiable in ``rows``.
    """
    b_idx, l_idx, r_idx = [], [], []
    t = rows.shape[0]
    for b, pos in enumerate(positions):
        for j, p in enumerate(pos):
            b_idx.append(b)
            l_idx.append(p)
            r_idx.append(min(j, t - 1))
    if not b_idx:
        return embeds
    bi = torch.tensor(b_idx, device=embeds.device)
    li = torch.tensor(l_idx, device=embeds.device)
    vals = rows[torch.tensor(r_idx, device=rows.device)].to(embeds.dtype)
    out = embeds.clone()
    out[bi, li] = (out[bi, li] + vals) if add else vals
    return out


def _row_norms(rows: torch.Tensor) -> torch.Tensor:
    return rows.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------------------------
# AdvAnchor
# ----------------------------------------------------------------------------------------------------------------
class AdversarialAnchor:
    """A universal perturbation ``delta`` (T, D) of the concept's token embeddings ``base`` (T, D).

    ``||delta_j|| <= radius * ||base_j||`` always holds. :meth:`refresh` takes ``steps`` ascent steps of length
    ``lr * ||base_j||`` along the per-row normalised gradient of ``objective(delta)`` (to be maximised), projecting
    back onto the ball after each. It starts at a random point of half the radius (at ``delta = 0`` the anchor equals
    the concept and the disagreement has a zero gradient).
    """

    def __init__(self, base: torch.Tensor, *, radius: float, lr: float, steps: int, generator: torch.Generator):
        self.base = base.detach().float()
        self.radius, self.lr, self.steps = float(radius), float(lr), int(steps)
        noise = torch.randn(self.base.shape, generator=generator).to(self.base.device)
        self.delta = self._project(noise / _row_norms(noise) * 0.5 * self.radius * _row_norms(self.base))

    def bound(self) -> torch.Tensor:
        """(T, 1) largest allowed norm of each row of ``delta``."""
        return self.radius * _row_norms(self.base)

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        scale = (self.bound() / _row_norms(delta)).clamp(max=1.0)
        return delta * scale

    def refresh(self, objective: Callable[[torch.Tensor], torch.Tensor]) -> list[float]:
        """Ascent on ``objective``; returns its value before each step."""
        values = []
        for _ in range(self.steps):
            d = self.delta.clone().requires_grad_(True)
            with torch.enable_grad():
                val = objective(d)
                (grad,) = torch.autograd.grad(val, d)
            values.append(float(val.detach()))
            step = grad.float() / _row_norms(grad) * self.lr * _row_norms(self.base)
            self.delta = self._project(self.delta + step)
        return values


# ----------------------------------------------------------------------------------------------------------------
# RealEra
# ----------------------------------------------------------------------------------------------------------------
def neighbor_offsets(e: torch.Tensor, cos_low: float, cos_high: float, generator: torch.Generator) -> torch.Tensor:
    """Offsets ``eta`` (N, D) with ``cos(e_i, e_i + eta_i)`` drawn uniformly from ``[cos_low, cos_high)``.

    ``eta_i`` is orthogonal to ``e_i`` (random direction) with length ``||e_i|| * tan(theta_i)``, so
    ``||eta_i|| <= ||e_i|| * sqrt(1 / cos_low^2 - 1)``.
    """
    e = e.float()
    n, d = e.shape
    u = torch.randn(n, d, generator=generator).to(e.device)
    unit = e / _row_norms(e)
    u = u - (u * unit).sum(-1, keepdim=True) * unit
    u = u / _row_norms(u)
    c = cos_low + torch.rand(n, 1, generator=generator).to(e.device) * (cos_high - cos_low)
    return u * _row_norms(e) * torch.sqrt(1.0 / c**2 - 1.0)


def mine_neighbors(
    e: torch.Tensor, k: int, *, s1: float, s2: float, radius: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """RealEra's mining for concept token embeddings ``e`` (N, D): (forget offsets, retain offsets), each (k, N, D).

    Forget: ``||eta|| <= radius * ||e||`` and ``cos(e, e + eta)`` in ``[s1, s2]``. Retain: ``||eta|| <= radius * ||e||``
    and ``cos < s1`` (between the smallest cosine the radius reaches and ``s1``).
    """
    lowest = 1.0 / (1.0 + radius**2) ** 0.5
    if lowest >= s1:
        raise ValueError(f"radius {radius} only reaches cos >= {lowest:.3f}; no neighbour falls below s1={s1}.")
    hi_f = min(s2, 1.0)
    lo_f = max(s1, lowest)
    rep = e.repeat(k, 1)
    forget = neighbor_offsets(rep, lo_f, hi_f, generator).view(k, *e.shape)
    retain = neighbor_offsets(rep, lowest, s1 - 1e-6 * (s1 - lowest), generator).view(k, *e.shape)
    return forget, retain


# ----------------------------------------------------------------------------------------------------------------
# DoCo
# ----------------------------------------------------------------------------------------------------------------
def project_conflicting(
    forget: Sequence[torch.Tensor | None], retain: Sequence[torch.Tensor | None]
) -> tuple[list[torch.Tensor | None], int]:
    """Per tensor: where ``<g_f, g_r> < 0``, ``g_f - <g_f, g_r> / ||g_r||^2 * g_r``; else ``g_f`` unchanged.

    Returns the new forget gradients and how many tensors conflicted. ``None`` (no gradient) passes through.
    """
    out: list[torch.Tensor | None] = []
    conflicts = 0
    for gf, gr in zip(forget, retain, strict=True):
        if gf is None or gr is None:
            out.append(gf)
            continue
        dot = (gf.double() * gr.double()).sum()
        nr = (gr.double() ** 2).sum()
        if dot < 0 and nr > 0:
            conflicts += 1
            out.append((gf.double() - (dot / nr) * gr.double()).to(gf.dtype))
        else:
            out.append(gf)
    return out, conflicts


# ----------------------------------------------------------------------------------------------------------------
# TRCE
# ----------------------------------------------------------------------------------------------------------------
def eot_mapping_loss(
    hidden: torch.Tensor, ids: torch.Tensor, target: torch.Tensor, target_ids: torch.Tensor, eos_token_id: int
) -> torch.Tensor:
    """Per-sample MSE between ``hidden`` and ``target`` (B, L, D) over the end-of-text positions only.

    The positions are the first EoT of each row and every position after it (the padding SD's UNet also reads);
    source position ``f_s + o`` is compared with target position ``f_t + o`` (same offset from the first EoT), so
    prompts of different lengths align. All other positions get no weight (and no gradient).
    """
    b, length, _ = hidden.shape
    fs = eos_positions(ids, eos_token_id).to(hidden.device)
    ft = eos_positions(target_ids, eos_token_id).to(hidden.device)
    pos = torch.arange(length, device=hidden.device).unsqueeze(0).expand(b, -1)
    tpos = pos - fs.unsqueeze(1) + ft.unsqueeze(1)
    valid = (pos >= fs.unsqueeze(1)) & (tpos < length)
    tgt = target.to(hidden.dtype).gather(1, tpos.clamp(0, length - 1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    err = ((hidden.float() - tgt.float()) ** 2).mean(-1) * valid
    return err.sum(1) / valid.sum(1).clamp_min(1)


# ----------------------------------------------------------------------------------------------------------------
# RECE-style derived embeddings
# ----------------------------------------------------------------------------------------------------------------
def derive_embeddings(
    encoder,
    input_ids: torch.Tensor,
    positions: Sequence[Sequence[int]],
    init: torch.Tensor,
    target: torch.Tensor,
    *,
    steps: int,
    lr: float,
    optimizer: str = "adam",
    eps: float | None = None,
    center: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[float], torch.Tensor]:
    """Concept-token rows (T, D) minimising ``MSE(encoder(prompts with the rows), target)`` (B, L, D).

    The encoder's weights get no gradient (their ``requires_grad`` flags are restored). Returns (rows, mean loss
    before each step, per-sample loss of the returned rows). ``eps`` bounds ``|rows - center|`` (L-inf).
    """
    params = list(encoder.parameters())
    flags = [p.requires_grad for p in params]
    dev = encoder.get_input_embeddings().weight.device
    ids = input_ids.to(dev)
    center = (init if center is None else center).detach().float().to(dev)
    var = init.detach().float().to(dev).clone().requires_grad_(True)
    opt = torch.optim.Adam([var], lr=lr) if optimizer == "adam" else None
    tgt = target.detach().float().to(dev)

    def per_sample(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            base = encoder.get_input_embeddings()(ids)
        emb = place_rows(base, positions, rows, add=False)
        out = encode_from_token_embeds(encoder, emb, ids).last_hidden_state
        return ((out.float() - tgt) ** 2).flatten(1).mean(1)

    losses: list[float] = []
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for _ in range(steps):
                loss = per_sample(var).mean()
                losses.append(float(loss.detach()))
                (grad,) = torch.autograd.grad(loss, var)
                if opt is not None:
                    var.grad = grad
                    opt.step()
                    var.grad = None
                else:
                    with torch.no_grad():
                        var -= lr * grad.sign()
                if eps is not None:
                    with torch.no_grad():
                        var.copy_(torch.max(torch.min(var, center + eps), center - eps))
        with torch.no_grad():
            final = per_sample(var.detach())
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    return var.detach(), losses, final


# ----------------------------------------------------------------------------------------------------------------
# wiring into the trainer
# ----------------------------------------------------------------------------------------------------------------
def _concept_words(cfg) -> list[str]:
    c = cfg.concept
    words = [c.text or c.name.replace("_", " "), c.name.replace("_", " ")]
    if cfg.is_miniature:
        from ..miniature import get_concept

        con = get_concept(c.name)
        words += [con.name, *con.synonyms]
    return [w for w in dict.fromkeys(w.strip() for w in words) if w]


class TrainerOptions:
    """The options of one :class:`~robust_encoders.training.trainer.Trainer` (created at the end of its setup)."""

    @staticmethod
    def needs_original_encoder_for(cfg) -> bool:
        """Whether ``cfg`` turns on an option that runs the frozen encoder on text or embeddings not known at set-up
        (the trainer then keeps a frozen copy for the whole run)."""
        return cfg.anchor.kind == "adversarial" or cfg.neighbors.k > 0 or cfg.token_focus.mode == "eot"

    def __init__(self, trainer) -> None:
        self.tr = trainer
        cfg = trainer.cfg
        self.cfg = cfg
        self.anchor_on = cfg.anchor.kind == "adversarial"
        self.neighbors_on = cfg.neighbors.k > 0
        self.eot_on = cfg.token_focus.mode == "eot"
        self.derived_on = cfg.attack.enabled and cfg.attack.mode == "derived"
        self.surgery = cfg.optim.grad_surgery == "per_tensor"
        self.eos = int(getattr(trainer.tokenizer, "eos_token_id", None) or 49407)
        self.anchor: AdversarialAnchor | None = None
        self._pos_cache: dict[str, tuple[list[int], int]] = {}
        self._safe_cache: dict[str, str] = {}
        if not (self.anchor_on or self.neighbors_on or self.eot_on or self.derived_on):
            return
        if getattr(trainer, "time_ids", None) is not None:
            raise ConfigError(f"The options {self._names()} support single-encoder pipelines (SD 1.x/2.x, miniature), "
                              "not SDXL yet.")
        words = _concept_words(cfg)
        tok = trainer.tokenizer
        enc = [tok(w, add_special_tokens=False).input_ids for w in words]
        order = sorted(range(len(words)), key=lambda i: -len(enc[i]))  # longest first ("five-pointed star" > "star")
        self.words = [words[i] for i in order]
        self.word_ids = [enc[i] for i in order]
        found = [self._positions(p) for p in trainer.forget_prompts]
        missing = [p for p, (pos, _) in zip(trainer.forget_prompts, found, strict=True) if not pos]
        if missing:
            raise ConfigError(
                f"The options {self._names()} act on the concept's tokens, but {len(missing)} forget prompt(s) name "
                f"none of {self.words} (e.g. {missing[0]!r}); set concept.text to the word the prompts use."
            )
        counts = [sum(1 for _, w in found if w == i) for i in range(len(self.words))]
        primary = max(range(len(self.words)), key=lambda i: counts[i])
        ids = torch.tensor(self.word_ids[primary], device=trainer.device)
        with torch.no_grad():
            self.concept_rows = trainer.te_orig.get_input_embeddings()(ids).detach().float()  # (T, D)
        if self.anchor_on:
            a = cfg.anchor
            self.anchor = AdversarialAnchor(
                self.concept_rows, radius=a.radius, lr=a.lr, steps=a.steps,
                generator=torch.Generator().manual_seed(derive_seed(cfg.stream_seed("init"), "anchor")),
            )

    def _names(self) -> str:
        on = [("anchor.kind=adversarial", self.anchor_on), ("neighbors", self.neighbors_on),
              ("token_focus.mode=eot", self.eot_on), ("attack.mode=derived", self.derived_on)]
        return ", ".join(n for n, f in on if f)

    def _positions(self, prompt: str) -> tuple[list[int], int]:
        if prompt not in self._pos_cache:
            ids = tokenize(self.tr.tokenizer, [prompt])
            self._pos_cache[prompt] = concept_positions(ids, self.word_ids)[0]
        return self._pos_cache[prompt]

    def positions(self, prompts: Sequence[str]) -> list[list[int]]:
        return [self._positions(p)[0] for p in prompts]

    # -- AdvAnchor --------------------------------------------------------------------------------------------------
    def _anchor_hidden(self, ids: torch.Tensor, positions, delta: torch.Tensor) -> torch.Tensor:
        te0 = self.tr.te_orig
        with torch.no_grad():
            base = te0.get_input_embeddings()(ids)
        emb = place_rows(base, positions, delta.to(base.dtype), add=True)
        return encode_from_token_embeds(te0, emb, ids).last_hidden_state

    def anchor_target(self, step: int, xb, prompts: list[str], target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The unlearning target with the adversarial anchor in place of ``''`` (refreshing ``delta`` when due)."""
        if not self.anchor_on:
            return target, {}
        tr = self.tr
        ids = tokenize(tr.tokenizer, prompts, device=tr.device)
        pos = self.positions(prompts)
        lat = xb.latents.to(tr.device, tr.frozen_dtype)
        ts = xb.timesteps.to(tr.device)
        eps_c = xb.eps_cond.to(tr.device).float()
        eps_u = xb.eps_uncond.to(tr.device).float()
        rec: dict[str, Any] = {}
        if step % self.cfg.anchor.every == 0:
            d_c = (eps_c - eps_u).flatten(1)

            def disagreement(delta: torch.Tensor) -> torch.Tensor:
                with tr._autocast():
                    eps_a = predict_eps(tr.unet_orig, lat, ts, self._anchor_hidden(ids, pos, delta).to(tr.frozen_dtype))
                return 1.0 - F.cosine_similarity((eps_a.float() - eps_u).flatten(1), d_c, dim=1).mean()

            vals = self.anchor.refresh(disagreement)
            rec["anchor_disagreement"] = vals[-1]
        with torch.no_grad(), tr._autocast():
            eps_a = predict_eps(tr.unet_orig, lat, ts, self._anchor_hidden(ids, pos, self.anchor.delta).to(tr.frozen_dtype))
        eta = self.cfg.unlearn.negative_guidance
        eps_a = eps_a.float()
        return (eps_a - eta * (eps_c - eps_a)).to(target.dtype), rec

    # -- RealEra -------------------------------------------------------------------------------------------------------
    def _neighbor_batch(self, prompts: list[str], offsets: torch.Tensor, k: int):
        """(ids, embeddings) of ``k`` prompts whose concept tokens are shifted by ``offsets`` (k, N_k, D)."""
        tr = self.tr
        sel = [prompts[i % len(prompts)] for i in range(k)]
        ids = tokenize(tr.tokenizer, sel, device=tr.device)
        pos = self.positions(sel)
        with torch.no_grad():
            emb = tr.te.get_input_embeddings()(ids).detach().clone()
        for i, p in enumerate(pos):
            emb[i, p] = emb[i, p] + offsets[i, : len(p)].to(emb.dtype)
        return ids, emb

    def neighbor_parts(self, step: int, prompts: list[str], lat, ts, target) -> tuple[list, list]:
        """(forget parts, [(name, group, weight, loss)] retain terms) of the mined neighbours."""
        if not self.neighbors_on:
            return [], []
        from .trainer import _Part

        n = self.cfg.neighbors
        tr = self.tr
        gen = derived_generator(self.cfg.stream_seed("step"), "neighbors", tr.rank, step)
        t_max = max(len(p) for p in self.positions(prompts))
        # one draw per (neighbour, token slot), around each selected prompt's own token embeddings
        sel = [prompts[i % len(prompts)] for i in range(n.k)]
        ids_sel = tokenize(tr.tokenizer, sel, device=tr.device)
        with torch.no_grad():
            emb_sel = tr.te.get_input_embeddings()(ids_sel).float()
        rows = torch.zeros(n.k, t_max, emb_sel.shape[-1], device=tr.device)
        for i, p in enumerate(self.positions(sel)):
            rows[i, : len(p)] = emb_sel[i, p]
            rows[i, len(p):] = emb_sel[i, p[-1]]
        flat = rows.reshape(-1, rows.shape[-1])
        fo, ro = mine_neighbors(flat, 1, s1=n.s1, s2=n.s2, radius=n.radius, generator=gen)
        f_ids, f_emb = self._neighbor_batch(prompts, fo[0].view(n.k, t_max, -1), n.k)
        r_ids, r_emb = self._neighbor_batch(prompts, ro[0].view(n.k, t_max, -1), n.k)
        b = len(prompts)
        src = [i % b for i in range(n.k)]
        parts = []
        if n.weight > 0:
            parts.append(_Part(
                "neighbors", lat[src], ts[src],
                lambda idx: encode_from_token_embeds(tr.te, f_emb[idx], f_ids[idx]).last_hidden_state,
                target[src], n.weight / n.k,
            ))
        terms = []
        if n.retain_weight > 0:
            with torch.no_grad():
                ref = encode_from_token_embeds(tr.te_orig, r_emb.to(tr.frozen_dtype), r_ids).last_hidden_state
            with tr._autocast():
                out = encode_from_token_embeds(tr.te, r_emb, r_ids).last_hidden_state
                terms.append(("neighbors_retain", "retain", n.retain_weight, F.mse_loss(out.float(), ref.float())))
        return parts, terms

    # -- TRCE ----------------------------------------------------------------------------------------------------------
    def safe_prompt(self, prompt: str) -> str:
        if prompt not in self._safe_cache:
            _, w = self._positions(prompt)
            text = prompt
            if w >= 0:
                pat = r"(?<![A-Za-z])" + re.escape(self.words[w]) + r"(?![A-Za-z])"
                text = re.sub(pat, self.cfg.token_focus.safe_text, prompt, count=1, flags=re.IGNORECASE)
            self._safe_cache[prompt] = " ".join(text.split())
        return self._safe_cache[prompt]

    def eot_terms(self, prompts: list[str], res) -> list[tuple[str, str, float, torch.Tensor]]:
        """TRCE's [EoT] mapping (and hinge) on the clean and adversarial forget prompts."""
        if not self.eot_on:
            return []
        tf = self.cfg.token_focus
        tr = self.tr
        ids = tokenize(tr.tokenizer, prompts, device=tr.device)
        safe = [self.safe_prompt(p) for p in prompts]
        safe_ids = tokenize(tr.tokenizer, safe, device=tr.device)
        t_safe = tr._orig_hidden(safe)
        t_own = tr._orig_hidden(prompts)
        idx = list(range(len(prompts)))
        srcs = [(tr._encode(prompts), ids)]
        if res is not None:
            adv_ids = res.real_input_ids if res.adv_token_ids is not None else res.input_ids
            adv = tr._adv_hidden(res, idx)
            srcs.append((getattr(adv, "encoder_hidden_states", adv), adv_ids[idx].to(tr.device)))
        mapping, hinge = [], []
        with tr._autocast():
            for hidden, src_ids in srcs:
                d_safe = eot_mapping_loss(hidden, src_ids, t_safe, safe_ids, self.eos)
                mapping.append(d_safe.mean())
                if tf.hinge_weight > 0:
                    d_own = eot_mapping_loss(hidden, src_ids, t_own, ids, self.eos)
                    hinge.append(F.relu(d_safe - d_own + tf.margin).mean())
        terms = []
        if tf.weight > 0:
            terms.append(("eot", "forget", tf.weight, sum(mapping) / len(mapping)))
        if hinge:
            terms.append(("eot_hinge", "forget", tf.hinge_weight, sum(hinge) / len(hinge)))
        return terms

    # -- RECE-style derived attack -------------------------------------------------------------------------------------
    def derived_attack(self, step: int, prompts: list[str], fresh: bool, state):
        """An ``AttackResult`` whose adversarial slots are the concept tokens, filled with derived embeddings."""
        from ..attacks import AttackResult, AttackState

        tr = self.tr
        a = self.cfg.attack
        ids = tokenize(tr.tokenizer, prompts, device=tr.device)
        pos = self.positions(prompts)
        warm = a.init == "warm" and state is not None and state.mode == "derived" and \
            tuple(state.variable.shape) == tuple(self.concept_rows.shape)
        init = state.variable.to(tr.device).float() if warm else self.concept_rows
        was_training = tr.model.training
        tr.model.eval()
        try:
            with tr._autocast():
                rows, losses, final = derive_embeddings(
                    tr.te, ids, pos, init, tr._orig_hidden(prompts), steps=a.steps if fresh else 0, lr=float(a.lr),
                    optimizer=a.optimizer, eps=a.eps, center=self.concept_rows,
                )
        finally:
            tr.model.train(was_training)
        with torch.no_grad():
            base = tr.te.get_input_embeddings()(ids)
            emb = place_rows(base, pos, rows, add=False).detach()
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for b, p in enumerate(pos):
            mask[b, p] = True
        rounds = (state.rounds + 1) if (warm and fresh) else (state.rounds if warm else 1)
        return AttackResult(
            token_embeds=emb, input_ids=ids, adv_mask=mask, adv_token_ids=None, texts=None, losses=losses,
            state=AttackState("derived", rows.clone(), None, rounds), sample_losses=final,
        )

    # -- DoCo ----------------------------------------------------------------------------------------------------------
    @staticmethod
    def take_grads(params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor | None]:
        """Move the accumulated gradients out of ``params`` (their ``.grad`` becomes None)."""
        out = [p.grad for p in params]
        for p in params:
            p.grad = None
        return out

    @staticmethod
    def combine(params: Sequence[torch.nn.Parameter], forget: list[torch.Tensor | None]) -> int:
        """``.grad`` holds the retain gradient: set it to ``surgery(forget, retain) + retain``; returns #conflicts."""
        retain = [p.grad for p in params]
        fixed, n = project_conflicting(forget, retain)
        for p, gf, gr in zip(params, fixed, retain, strict=True):
            if gf is None:
                continue
            p.grad = gf if gr is None else gf + gr
        return n

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.anchor is None:
            return {}
        return {"options.anchor_delta": self.anchor.delta.detach().to("cpu").contiguous().clone()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.anchor is not None and "options.anchor_delta" in tensors:
            self.anchor.delta = tensors["options.anchor_delta"].to(self.anchor.base.device).float()
