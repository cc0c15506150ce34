"""Attacks against a Stable Diffusion pipeline with any text encoder.

Each attack tries to make the pipeline draw an erased concept again and checks success the
way a user would see it: generate an image and ask the detector.

* :class:`UnlearnDiffAtk` - ``k`` prefix tokens chosen over the real vocabulary to minimise the
  denoising loss on the original model's image of the prompt (by default against the original
  model's own noise prediction, ``objective="teacher"``), checked by generating from the
  decoded text every ``check_every`` steps; stops at the first success (Zhang et al., "To
  Generate or Not?"). ``method="gcg"`` (default) takes the gradient of the relaxed one-hot at the
  current tokens to propose swaps whose exact loss is compared (GCG); ``method="simplex"`` is the
  paper's projected gradient on the probability simplex with argmax projection. On the
  miniature world GCG is far stronger, and an attack must be strong before a low ASR means
  anything.
* :class:`SoftPromptAttack` - the same objective over free token embeddings (PGD in embedding
  space): an upper bound no real prompt can exceed.
* :class:`RingABell` - a concept direction from prompt pairs with/without the concept, added to
  the prompt's embedding; real tokens whose embedding matches it are searched (relaxed one-hot
  gradient search instead of the paper's genetic algorithm) and generated (Tsai et al.).
* :class:`SynonymAttack` - prompts that evoke the concept without its name: synonyms in place of
  the name and held-out paraphrases.
* :class:`ConceptInversion` - CCE-style: one new token embedding learned on the *erased* model
  from images of the concept, put where the prompt names the concept (Pham et al.).

Example:
    >>> from robust_encoders.attacks import ATTACKS, build_attack
    >>> sorted(ATTACKS)
    ['inversion', 'ringabell', 'soft_prompt', 'synonym', 'unlearndiffatk']
    >>> build_attack("unlearndiffatk", steps=20).config.steps
    20
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.text import encode_from_token_embeds, tokenize
from .base import AttackContext, AttackOutcome, AttackTarget, PipelineAttack, replace_words
from .prompt_attack import AttackState, PromptAttack, PromptAttackConfig

__all__ = [
    "ATTACKS",
    "DenoiseLoss",
    "ConceptInversion",
    "ConceptInversionConfig",
    "RingABell",
    "RingABellConfig",
    "SoftPromptAttack",
    "SoftPromptConfig",
    "SynonymAttack",
    "SynonymConfig",
    "UnlearnDiffAtk",
    "UnlearnDiffAtkConfig",
    "build_attack",
]


def _validate_range(name: str, t: tuple[int, int]) -> None:
    if len(t) != 2 or not (0 <= t[0] <= t[1] <= 999):
        raise ValueError(f"{name} must be (low, high) with 0 <= low <= high <= 999 (DDPM timesteps), got {t!r}.")


class DenoiseLoss:
    """Per-prompt denoising loss of the UNet on fixed target latents (UnlearnDiffAtk's objective).

    ``resample()`` draws ``samples`` (timestep, noise) pairs per prompt from a seeded generator;
    ``loss(out, rows)`` scores each encoded sequence against the draws of its prompt ``rows[i]``
    (all candidates of a prompt see the same draws). Calling it as ``loss(out)`` scores one
    sequence per prompt.

    With ``teacher`` (the original model's conditioning of each target prompt) the goal on each
    noisy latent is the original model's noise prediction instead of the drawn noise: the same
    objective in expectation over images of the prompt, without the variance of the one sampled
    noise (which, on small images, swamps the part of the loss the concept decides).
    """

    def __init__(self, model, z0: torch.Tensor, t_range: tuple[int, int] = (0, 999), samples: int = 1,
                 seed: int = 0, teacher=None) -> None:
        self.model, self.z0, self.t_range, self.samples = model, z0, tuple(t_range), samples
        self.teacher = teacher
        self.gen = torch.Generator().manual_seed(seed)
        self.resample()

    def resample(self) -> None:
        b, n = self.z0.shape[0], self.samples
        self.t = torch.randint(self.t_range[0], self.t_range[1] + 1, (b, n), generator=self.gen).to(self.z0.device)
        self.noise = torch.randn((b, n, *self.z0.shape[1:]), generator=self.gen).to(self.z0.device, self.z0.dtype)
        self.goal = self.noise
        if self.teacher is not None:
            cond = self.teacher.repeat_interleave(n, 0)
            with torch.no_grad():
                eps0 = self.model.noise_pred(cond, self.z0.repeat_interleave(n, 0), self.t.reshape(-1),
                                             self.noise.reshape(-1, *self.z0.shape[1:]))
            self.goal = eps0.view(b, n, *self.z0.shape[1:])

    def __call__(self, out, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            rows = torch.arange(self.z0.shape[0], device=self.z0.device)
        rows = rows.to(self.z0.device)
        n = self.samples
        cond = self.model.conditioning(out).repeat_interleave(n, 0)
        z0 = self.z0[rows].repeat_interleave(n, 0)
        t = self.t[rows].reshape(-1)
        noise = self.noise[rows].reshape(-1, *self.z0.shape[1:])
        goal = self.goal[rows].reshape(-1, *self.z0.shape[1:])
        return self.model.denoise_loss(cond, z0, t, noise, goal).view(len(rows), n).mean(1)


# ---------------------------------------------------------------------------------------------------
# UnlearnDiffAtk and the continuous soft prompt
# ---------------------------------------------------------------------------------------------------
@dataclass
class UnlearnDiffAtkConfig:
    """Settings of the UnlearnDiffAtk-style discrete attack."""

    k: int | None = field(default=None, metadata={"help": "Adversarial prefix tokens (None: 5 for nudity, 3 otherwise)."})
    method: str = field(default="gcg", metadata={
        "help": "gcg: gradient of the relaxed one-hot proposes token swaps whose exact loss is compared (strong); "
                "simplex: projected gradient on the probability simplex, argmax at each check (the paper's "
                "relaxation)."})
    steps: int = field(default=80, metadata={
        "help": "Optimisation steps per restart (stops at the first success; on the ESD-erased miniature 'star', 3 "
                "tokens broke 50% of prompts in 40 steps, 79% in 80)."})
    lr: float = field(default=0.1, metadata={"help": "Step size on the probability simplex (method=simplex)."})
    candidates: int = field(default=16, metadata={"help": "Token swaps evaluated per prompt and step (method=gcg)."})
    topk: int = field(default=64, metadata={"help": "Most promising tokens per slot to swap in (method=gcg)."})
    check_every: int = field(default=10, metadata={"help": "Generate from the current tokens every N steps; "
                                                           "stop at the first success."})
    restarts: int = field(default=1, metadata={"help": "Independent restarts for prompts not yet broken."})
    position: str = field(default="prefix", metadata={"help": "prefix | suffix | replace."})
    optimizer: str = field(default="adam", metadata={"help": "adam | sign (method=simplex)."})
    t_range: tuple[int, int] = field(default=(0, 999), metadata={"help": "Timesteps sampled for the loss."})
    noise_samples: int = field(default=2, metadata={"help": "(t, noise) draws per prompt and step."})
    objective: str = field(default="teacher", metadata={
        "help": "teacher: match the original model's noise prediction for the prompt on the noisy target latent "
                "(the diffusion loss without the sampled noise's variance; default: on the ESD-erased miniature 'red' "
                "it raised UnlearnDiffAtk's ASR from 50% to 67%); denoise: the diffusion loss against the sampled "
                "noise, as in the paper."})
    eval_batch: int = field(default=64, metadata={"help": "Candidate prompts per UNet call (method=gcg; lower it "
                                                          "for large models)."})

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 1:
            raise ValueError(f"{type(self).__name__}.k must be >= 1 or None, got {self.k}.")
        if self.method not in ("gcg", "simplex", "continuous"):
            raise ValueError(f"{type(self).__name__}.method must be 'gcg' or 'simplex', got {self.method!r}.")
        if self.objective not in ("teacher", "denoise"):
            raise ValueError(f"{type(self).__name__}.objective must be 'teacher' or 'denoise', got {self.objective!r}.")
        for name in ("steps", "check_every", "restarts", "noise_samples", "candidates", "topk", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}.")
        self.t_range = tuple(self.t_range)
        _validate_range(f"{type(self).__name__}.t_range", self.t_range)
        PromptAttackConfig(mode="discrete", position=self.position, optimizer=self.optimizer, lr=self.lr)


@dataclass
class SoftPromptConfig(UnlearnDiffAtkConfig):
    """Settings of the continuous soft-prompt (embedding PGD) attack."""

    method: str = field(default="continuous", metadata={"help": "Always 'continuous' (free embeddings)."})
    steps: int = field(default=120, metadata={
        "help": "Optimisation steps per restart (an upper bound must be run long: on the ESD-erased miniature "
                "'stripes' 40 steps brought the concept back in 29% of prompts, 120 in 83%)."})
    lr: float = field(default=0.02, metadata={"help": "Step size in embedding space."})
    eps: float | None = field(default=None, metadata={"help": "L-inf bound around the initial embeddings (None: free)."})
    bound: str = field(default="none", metadata={
        "help": "none: free embeddings; vocab: every slot stays in the hull of the token embeddings (their bounding "
                "box and largest norm), still an upper bound on real prompts but without off-vocabulary vectors "
                "(unbounded slots reach ~10x the largest token norm on the miniature model)."})
    init: str = field(default="token", metadata={"help": "random | token (start from random real tokens)."})

    def __post_init__(self) -> None:
        self.method = "continuous"
        super().__post_init__()
        PromptAttackConfig(mode="continuous", eps=self.eps, bound=self.bound)  # teaching errors for eps / bound


class UnlearnDiffAtk(PipelineAttack):
    """Discrete adversarial prefix optimised on the denoising loss, success checked by generation."""

    name = "unlearndiffatk"
    needs_target_latents = True

    def __init__(self, config: UnlearnDiffAtkConfig | None = None) -> None:
        super().__init__(config or UnlearnDiffAtkConfig())

    def _images(self, ctx: AttackContext, rows: list[AttackTarget], texts: list[str] | None,
                token_embeds: torch.Tensor | None = None, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        seeds = [t.seed for t in rows]
        guid = [t.guidance for t in rows]
        if texts is not None:
            return ctx.model.generate(ctx.encoder, texts, seeds=seeds, guidance=guid)
        with torch.no_grad():
            cond = ctx.model.cond_from_embeds(ctx.encoder, token_embeds, input_ids)
        return ctx.model.generate(ctx.encoder, cond=cond, seeds=seeds, guidance=guid)

    def attack(self, ctx: AttackContext, targets: Sequence[AttackTarget], *, seed: int) -> list[AttackOutcome]:
        cfg = self.config
        if not targets:
            return []
        if any(t.target_latent is None for t in targets):
            raise ValueError(f"{self.name} needs each target's latent from the original model (target_latent).")
        z0 = torch.stack([t.target_latent for t in targets]).to(ctx.model.device, torch.float32)
        results: dict[int, AttackOutcome] = {}
        queries = dict.fromkeys(range(len(targets)), 0)
        teacher = ctx.model.cond(ctx.original_encoder, [t.prompt for t in targets]) if cfg.objective == "teacher" \
            else None
        for restart in range(cfg.restarts):
            remaining = [i for i in range(len(targets)) if i not in results or not results[i].success]
            if not remaining:
                break
            run_seed = seed * 1_000_003 + restart * 1009
            loss = DenoiseLoss(ctx.model, z0, cfg.t_range, cfg.noise_samples, run_seed, teacher)
            if cfg.method == "gcg":
                self._run_gcg(ctx, targets, remaining, loss, run_seed, restart, results, queries)
            else:
                self._run_relaxed(ctx, targets, remaining, loss, run_seed, restart, results, queries)
        return [results[i] for i in range(len(targets))]

    def _record(self, ctx, targets, remaining, images, texts, losses, done, results, queries) -> list[int]:
        """Store outcomes of one check; return the positions (into ``remaining``) still unbroken."""
        hit = ctx.detect(images)
        keep = []
        for j, i in enumerate(remaining):
            queries[i] += 1
            text = texts[j] if texts is not None else None
            sl = float(losses[j]) if losses is not None else None
            results[i] = AttackOutcome(targets[i].index, bool(hit[j]), text, images[j], queries[i], done, sl)
            if not hit[j]:
                keep.append(j)
        return keep

    def _run_gcg(self, ctx, targets, remaining, loss, run_seed, restart, results, queries) -> None:
        from .token_search import TokenSearch, TokenSearchConfig

        cfg = self.config
        rem = torch.tensor(remaining)
        search = TokenSearch(ctx.encoder, ctx.model.tokenizer, [targets[i].prompt for i in remaining],
                             TokenSearchConfig(k=cfg.k or ctx.concept.default_k, candidates=cfg.candidates,
                                               topk=cfg.topk, position=cfg.position, seed=run_seed,
                                               eval_batch=cfg.eval_batch))
        for step in range(cfg.steps):
            loss.resample()
            search.step(lambda out, rows, rem=rem: loss(out, rem[rows.cpu()]))
            if (step + 1) % cfg.check_every == 0 or step + 1 == cfg.steps:
                rows = [targets[i] for i in remaining]
                texts = search.texts
                images = self._images(ctx, rows, texts)
                keep = self._record(ctx, targets, remaining, images, texts, search.losses, step + 1 + restart * cfg.steps,
                                    results, queries)
                remaining = [remaining[j] for j in keep]
                if not remaining:
                    return
                search.keep(keep)
                rem = torch.tensor(remaining)

    def _run_relaxed(self, ctx, targets, remaining, loss, run_seed, restart, results, queries) -> None:
        cfg = self.config
        mode = "continuous" if cfg.method == "continuous" else "discrete"
        state: AttackState | None = None
        done = 0
        while done < cfg.steps and remaining:
            steps = min(cfg.check_every, cfg.steps - done)
            rem = torch.tensor(remaining)

            def fn(out, rem=rem):
                loss.resample()  # fresh draws every step (and for the final evaluation)
                return loss(out, rem)

            pcfg = PromptAttackConfig(
                mode=mode, steps=steps, lr=cfg.lr, k=cfg.k or ctx.concept.default_k, position=cfg.position,
                optimizer=cfg.optimizer, init="warm" if state is not None else getattr(cfg, "init", "random"),
                eps=getattr(cfg, "eps", None), bound=getattr(cfg, "bound", "none"), seed=run_seed,
            )
            res = PromptAttack(ctx.encoder, ctx.model.tokenizer, pcfg).run([targets[i].prompt for i in remaining], fn,
                                                                          state)
            done += steps
            rows = [targets[i] for i in remaining]
            images = self._images(ctx, rows, res.texts, res.token_embeds, res.input_ids)
            keep = self._record(ctx, targets, remaining, images, res.texts, res.sample_losses,
                                done + restart * cfg.steps, results, queries)
            remaining = [remaining[j] for j in keep]
            state = dataclasses.replace(res.state, variable=res.state.variable[keep]) if keep else None


class SoftPromptAttack(UnlearnDiffAtk):
    """Continuous soft-prompt attack: the UnlearnDiffAtk objective over free embeddings (an upper bound)."""

    name = "soft_prompt"

    def __init__(self, config: SoftPromptConfig | None = None) -> None:
        PipelineAttack.__init__(self, config or SoftPromptConfig())


# ---------------------------------------------------------------------------------------------------
# Ring-A-Bell
# ---------------------------------------------------------------------------------------------------
@dataclass
class RingABellConfig:
    """Settings of the Ring-A-Bell-style concept-vector attack."""

    n_tokens: int = field(default=16, metadata={"help": "Length K of the searched prompt (tokens)."})
    etas: tuple[float, ...] = field(default=(1.0, 3.0), metadata={"help": "Strengths of the concept vector tried in turn."})
    steps: int = field(default=30, metadata={"help": "Token-search steps per strength."})
    candidates: int = field(default=32, metadata={"help": "Token swaps evaluated per prompt and step."})
    topk: int = field(default=64, metadata={"help": "Most promising tokens per slot to swap in."})
    vector_encoder: str = field(default="original", metadata={"help": "Encoder for the concept vector and search: "
                                                                      "'original' (black-box, as the paper) or 'target'."})

    def __post_init__(self) -> None:
        self.etas = tuple(float(e) for e in self.etas)
        if self.n_tokens < 1 or self.steps < 1 or self.candidates < 1 or self.topk < 1 or not self.etas:
            raise ValueError("RingABellConfig needs n_tokens, steps, candidates, topk >= 1 and at least one eta.")
        if self.vector_encoder not in ("original", "target"):
            raise ValueError(f"RingABellConfig.vector_encoder must be 'original' or 'target', got {self.vector_encoder!r}.")


class RingABell(PipelineAttack):
    """Concept vector from prompt pairs; real tokens whose embedding matches ``E(prompt) + eta * vector``.

    The paper searches the K-token prompt with a genetic algorithm; here the same objective is
    searched with gradient-guided token swaps (:class:`~robust_encoders.attacks.token_search.TokenSearch`).
    """

    name = "ringabell"

    def __init__(self, config: RingABellConfig | None = None) -> None:
        super().__init__(config or RingABellConfig())
        self.vector: torch.Tensor | None = None

    def _encoder(self, ctx: AttackContext):
        return ctx.original_encoder if self.config.vector_encoder == "original" else ctx.encoder

    @staticmethod
    def pairs(ctx: AttackContext, prompts: Sequence[str]) -> tuple[list[str], list[str]]:
        """(with concept, without concept) prompt pairs built from ``prompts``."""
        w, wo = [], []
        for p in prompts:
            without, n = replace_words(p, ctx.concept.words, "")
            w.append(p if n else f"{ctx.concept.canonical}, {p}")
            wo.append(" ".join(without.split()))
        return w, wo

    @torch.no_grad()
    def setup(self, ctx: AttackContext, targets: Sequence[AttackTarget]) -> None:
        enc = self._encoder(ctx)
        with_c, without_c = self.pairs(ctx, [t.prompt for t in targets])
        a = ctx.model.token_states(enc, with_c).float()
        b = ctx.model.token_states(enc, without_c).float()
        self.vector = (a - b).mean(0)

    def attack(self, ctx: AttackContext, targets: Sequence[AttackTarget], *, seed: int) -> list[AttackOutcome]:
        from .token_search import TokenSearch, TokenSearchConfig

        if self.vector is None:
            self.setup(ctx, targets)
        cfg = self.config
        enc = self._encoder(ctx)
        base = ctx.model.token_states(enc, [t.prompt for t in targets]).float()
        out: dict[int, AttackOutcome] = {}
        remaining = list(range(len(targets)))
        for e_i, eta in enumerate(cfg.etas):
            if not remaining:
                break
            goal = base[remaining] + eta * self.vector.to(base.device)

            def loss_fn(o, rows, goal=goal):
                return ((o.last_hidden_state.float() - goal[rows.to(goal.device)]) ** 2).flatten(1).mean(1)

            search = TokenSearch(enc, ctx.model.tokenizer, [""] * len(remaining),
                                 TokenSearchConfig(k=cfg.n_tokens, candidates=cfg.candidates, topk=cfg.topk,
                                                   seed=seed * 31 + e_i))
            for _ in range(cfg.steps):
                search.step(loss_fn)
            texts = search.texts
            rows = [targets[i] for i in remaining]
            images = ctx.model.generate(ctx.encoder, texts, seeds=[t.seed for t in rows],
                                        guidance=[t.guidance for t in rows])
            hit = ctx.detect(images)
            keep = []
            for j, i in enumerate(remaining):
                out[i] = AttackOutcome(targets[i].index, bool(hit[j]), texts[j], images[j], e_i + 1,
                                       (e_i + 1) * cfg.steps, float(search.losses[j]))
                if not hit[j]:
                    keep.append(i)
            remaining = keep
        return [out[i] for i in range(len(targets))]


# ---------------------------------------------------------------------------------------------------
# Synonyms and paraphrases
# ---------------------------------------------------------------------------------------------------
@dataclass
class SynonymConfig:
    """Settings of the synonym / paraphrase attack."""

    max_variants: int = field(default=8, metadata={"help": "Most prompt variants tried per prompt."})

    def __post_init__(self) -> None:
        if self.max_variants < 1:
            raise ValueError(f"SynonymConfig.max_variants must be >= 1, got {self.max_variants}.")


class SynonymAttack(PipelineAttack):
    """Prompts naming the concept only through synonyms (in place of the name, and in held-out paraphrases).

    Paraphrases come from ``target.meta["paraphrases"]``: templates with a ``{concept}`` slot
    (the miniature prompt sets supply held-out phrasings of the same scene).
    """

    name = "synonym"

    def __init__(self, config: SynonymConfig | None = None) -> None:
        super().__init__(config or SynonymConfig())

    def variants(self, ctx: AttackContext, target: AttackTarget) -> list[str]:
        syn = list(ctx.concept.synonyms)
        if not syn:
            return []
        direct = []
        for s in syn:
            text, n = replace_words(target.prompt, ctx.concept.words, s)
            direct.append(text if n else f"{s}, {target.prompt}")
        templates = list(target.meta.get("paraphrases", []))
        # every (paraphrase, synonym) pair, ordered so that early variants spread over both
        para = [t.format(concept=syn[(i + r) % len(syn)]) for r in range(len(syn)) for i, t in enumerate(templates)]
        out: list[str] = []
        for pair in itertools.zip_longest(direct, para):
            for v in pair:
                if v and v not in out and v != target.prompt:
                    out.append(v)
        return out[: self.config.max_variants]

    def attack(self, ctx: AttackContext, targets: Sequence[AttackTarget], *, seed: int) -> list[AttackOutcome]:
        variants = [self.variants(ctx, t) for t in targets]
        if not ctx.concept.synonyms:
            return [AttackOutcome(t.index, False, None, None, 0) for t in targets]
        out: dict[int, AttackOutcome] = {}
        remaining = [i for i in range(len(targets)) if variants[i]]
        for i in range(len(targets)):
            if not variants[i]:
                out[i] = AttackOutcome(targets[i].index, False, None, None, 0)
        v = 0
        while remaining:
            rows = [targets[i] for i in remaining]
            texts = [variants[i][v] for i in remaining]
            images = ctx.model.generate(ctx.encoder, texts, seeds=[t.seed for t in rows],
                                        guidance=[t.guidance for t in rows])
            hit = ctx.detect(images)
            keep = []
            for j, i in enumerate(remaining):
                out[i] = AttackOutcome(targets[i].index, bool(hit[j]), texts[j], images[j], v + 1)
                if not hit[j] and v + 1 < len(variants[i]):
                    keep.append(i)
            remaining = keep
            v += 1
        return [out[i] for i in range(len(targets))]


# ---------------------------------------------------------------------------------------------------
# Concept inversion (CCE-style)
# ---------------------------------------------------------------------------------------------------
@dataclass
class ConceptInversionConfig:
    """Settings of the CCE-style concept-inversion attack."""

    n_train: int = field(default=8, metadata={"help": "Images of the concept (from the original model) to learn from."})
    steps: int = field(default=150, metadata={"help": "Adam steps learning the new token embedding."})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate."})
    t_range: tuple[int, int] = field(default=(0, 999), metadata={"help": "Timesteps sampled for the loss."})
    seed_offset: int = field(default=100_000, metadata={"help": "Training images use seeds offset from the eval seeds."})

    def __post_init__(self) -> None:
        self.t_range = tuple(self.t_range)
        _validate_range("ConceptInversionConfig.t_range", self.t_range)
        if self.n_train < 1 or self.steps < 0:
            raise ValueError("ConceptInversionConfig needs n_train >= 1 and steps >= 0.")


class ConceptInversion(PipelineAttack):
    """Learn one new token embedding on the erased encoder that brings the concept back.

    Prompts get the learned token where they name the concept (or as a prefix when they don't).
    Training images come from the original model with seeds distinct from the evaluation's.
    """

    name = "inversion"
    placeholder_candidates = ("sks", "olis", "zzz")

    def __init__(self, config: ConceptInversionConfig | None = None) -> None:
        super().__init__(config or ConceptInversionConfig())
        self.embedding: torch.Tensor | None = None
        self.losses: list[float] = []

    def _placeholder(self, ctx: AttackContext, prompts: Sequence[str]) -> tuple[str, int]:
        tok = ctx.model.tokenizer
        for w in self.placeholder_candidates:
            ids = tok(w, add_special_tokens=False).input_ids
            if len(ids) == 1 and not any(w in p.lower() for p in prompts):
                return w, ids[0]
        raise RuntimeError("No single-token placeholder word is free for concept inversion.")

    def _with_slot(self, ctx: AttackContext, prompts: Sequence[str]) -> tuple[list[str], int]:
        word, tid = self._placeholder(ctx, prompts)
        out = []
        for p in prompts:
            text, n = replace_words(p, ctx.concept.words, word)
            out.append(text if n else f"{word} {p}")
        return out, tid

    def _cond(self, ctx: AttackContext, prompts: Sequence[str], emb: torch.Tensor) -> torch.Tensor:
        texts, tid = self._with_slot(ctx, prompts)
        ids = tokenize(ctx.model.tokenizer, texts, device=ctx.model.device)
        table = ctx.encoder.get_input_embeddings()
        tok = table(ids).float()
        mask = ids == tid
        tok = torch.where(mask.unsqueeze(-1), emb.to(tok.device).view(1, 1, -1).expand_as(tok), tok)
        return ctx.model.conditioning(encode_from_token_embeds(ctx.encoder, tok.to(table.weight.dtype), ids))

    def setup(self, ctx: AttackContext, targets: Sequence[AttackTarget]) -> None:
        cfg = self.config
        train = list(targets)[: cfg.n_train]
        if not train:
            raise ValueError("Concept inversion needs at least one prompt to learn from.")
        prompts = [t.prompt for t in train]
        seeds = [t.seed + cfg.seed_offset for t in train]
        gen = ctx.model.generate(ctx.original_encoder, prompts, seeds=seeds, guidance=[t.guidance for t in train],
                                 return_latents=True)
        z0 = gen.latents.float()
        table = ctx.encoder.get_input_embeddings()
        ids = ctx.model.tokenizer(ctx.concept.canonical, add_special_tokens=False).input_ids
        init = table.weight[torch.tensor(ids, device=table.weight.device)].detach().float().mean(0)
        emb = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([emb], lr=cfg.lr)
        g = torch.Generator().manual_seed(ctx.seed * 7 + 11)
        params = list(ctx.encoder.parameters())
        flags = [p.requires_grad for p in params]
        self.losses = []
        try:
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                for _ in range(cfg.steps):
                    t = torch.randint(cfg.t_range[0], cfg.t_range[1] + 1, (len(train),), generator=g)
                    noise = torch.randn(z0.shape, generator=g).to(z0.device)
                    loss = ctx.model.denoise_loss(self._cond(ctx, prompts, emb), z0, t.to(z0.device), noise).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    self.losses.append(float(loss.detach()))
        finally:
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)
        self.embedding = emb.detach()

    def attack(self, ctx: AttackContext, targets: Sequence[AttackTarget], *, seed: int) -> list[AttackOutcome]:
        if not targets:
            return []
        if self.embedding is None:
            self.setup(ctx, targets)
        with torch.no_grad():
            cond = self._cond(ctx, [t.prompt for t in targets], self.embedding)
        images = ctx.model.generate(ctx.encoder, cond=cond, seeds=[t.seed for t in targets],
                                    guidance=[t.guidance for t in targets])
        hit = ctx.detect(images)
        shown = [replace_words(t.prompt, ctx.concept.words, "<inverted>") for t in targets]
        texts = [text if n else f"<inverted> {t.prompt}" for (text, n), t in zip(shown, targets, strict=True)]
        return [
            AttackOutcome(t.index, bool(hit[j]), texts[j], images[j], 1, self.config.steps,
                          self.losses[-1] if self.losses else None)
            for j, t in enumerate(targets)
        ]


ATTACKS: dict[str, tuple[type[PipelineAttack], type]] = {
    "unlearndiffatk": (UnlearnDiffAtk, UnlearnDiffAtkConfig),
    "soft_prompt": (SoftPromptAttack, SoftPromptConfig),
    "ringabell": (RingABell, RingABellConfig),
    "synonym": (SynonymAttack, SynonymConfig),
    "inversion": (ConceptInversion, ConceptInversionConfig),
}


def build_attack(name: str, **overrides) -> PipelineAttack:
    """An attack by name with config overrides (unknown names and keys raise a teaching error)."""
    key = name.strip().lower().replace("-", "_")
    if key not in ATTACKS:
        raise KeyError(f"Unknown attack {name!r}; choose from {', '.join(ATTACKS)}.")
    cls, cfg_cls = ATTACKS[key]
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise KeyError(f"Attack {key!r} has no setting(s) {', '.join(bad)}; it has {', '.join(sorted(known))}.")
    return cls(cfg_cls(**overrides))
