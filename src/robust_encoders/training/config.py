"""Training configuration: typed dataclasses, YAML recipes, dotted overrides, strict validation.

A recipe is a YAML file whose sections mirror :class:`TrainConfig` (``concept``, ``model``,
``unlearn``, ``sampling``, ``attack``, ``retain``, ``trainable``, ``optim``, ``checkpoint``,
``log``, ``engine``). A recipe may start from another one with ``extends: other_recipe``
(resolved next to it; nested mappings are merged). Command-line overrides use dotted keys,
``attack.steps=5 retain.weight=0.5``; values are parsed as YAML (``null``, ``[a, b]``,
``true``) and numbers like ``1e-5`` are understood. Unknown keys anywhere are an error that
names the closest valid key.

The dataclass defaults are the AdvUnlearn reference settings for Stable Diffusion 1.4
(Zhang et al., NeurIPS 2024, public code ``OPTML-Group/AdvUnlearn``): 1000 iterations, Adam
lr 1e-5, attack warm-up 200 iterations, a 30-step continuous prefix attack with one token and
lr 1e-3, 5 retain prompts per step, retain weight 0.3 or 0.5, DDIM 50 steps, start guidance 3,
negative guidance 1. Recipes in ``recipes/`` change what differs per concept or per world.

Example:
    >>> from robust_encoders.training.config import TrainConfig, apply_overrides
    >>> cfg = TrainConfig.from_dict({"concept": {"name": "star"}, "model": {"base_model": "miniature"}})
    >>> cfg = apply_overrides(cfg, ["attack.steps=5", "optim.lr=1e-4"])
    >>> cfg.attack.steps, cfg.optim.lr
    (5, 0.0001)
    >>> apply_overrides(cfg, ["atack.steps=5"])
    Traceback (most recent call last):
    ...
    robust_encoders.training.config.ConfigError: Unknown config key 'atack.steps'. Did you mean 'attack.steps' or 'anchor.steps'?
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

__all__ = [
    "ConfigError",
    "ConceptConfig",
    "ModelConfig",
    "UnlearnConfig",
    "SamplingConfig",
    "AttackSettings",
    "RetainConfig",
    "LoraSettings",
    "TrainableConfig",
    "OptimConfig",
    "CheckpointConfig",
    "LogConfig",
    "EngineConfig",
    "AnchorConfig",
    "NeighborsConfig",
    "TokenFocusConfig",
    "SeedsConfig",
    "TrainConfig",
    "apply_overrides",
    "parse_override",
    "load_recipe",
    "load_recipe_dict",
    "config_help",
    "MINIATURE",
]

MINIATURE = "miniature"


class ConfigError(ValueError):
    """A recipe or override is invalid (unknown key, wrong type, value out of range)."""


# Keys added after runs were already made with this config, and their defaults: while a run keeps the default, the
# key stays out of its fingerprint, so run folders made before it existed still resume (TrainConfig.fingerprint).
_ADDED_LATER = {"attack.candidates": 16, "attack.topk": 64, "attack.chain_modes": None, "attack.chain_steps": None,
                "attack.eval_batch": 32, "attack.chain_k": None}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _choice(section: str, name: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    _check(value in allowed, f"{section}.{name}={value!r} is not valid; choose one of {', '.join(map(repr, allowed))}.")


def _positive(section: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    _check(ok, f"{section}.{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}.")


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------
class _Section:
    """Mixin: every section validates itself on construction."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        pass


@dataclass
class ConceptConfig(_Section):
    """What to erase."""

    name: str = field(
        default="",
        metadata={"help": "Concept to erase: a miniature concept (star, red, stripes, ...) or a real one (nudity, vangogh, ...)."},
    )
    kind: str = field(
        default="auto",
        metadata={"help": "nudity | style | object | colour; 'auto' takes it from the miniature world or the recipe."},
    )
    text: str = field(
        default="",
        metadata={"help": "How prompts name the concept (e.g. 'Van Gogh'); empty = the name with '_' as spaces."},
    )
    prompts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Prompts whose images are erased. Empty = automatic: [text] for real SD (as AdvUnlearn), "
            "canonical miniature prompts naming the concept for the miniature world."
        },
    )

    def validate(self) -> None:
        _choice("concept", "kind", self.kind, ("auto", "nudity", "style", "object", "colour"))
        _check(all(isinstance(p, str) and p.strip() for p in self.prompts), "concept.prompts must be non-empty strings.")


@dataclass
class ModelConfig(_Section):
    """The base pipeline whose text encoder is fine-tuned."""

    base_model: str = field(
        default="CompVis/stable-diffusion-v1-4",
        metadata={"help": "'miniature' (embedded), a local diffusers pipeline folder, or a Hub repo id (must be cached offline)."},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of base_model."})
    dtype: str = field(
        default="auto",
        metadata={"help": "dtype of the frozen parts: auto (fp32 on CPU, bf16/fp16 with mixed precision on GPU), float32, float16, bfloat16."},
    )
    mixed_precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPUs that support it, else fp16; none on CPU), no, fp16, bf16."}
    )
    device: str | None = field(default=None, metadata={"help": "Device override (default: accelerate's choice)."})
    encoders: str = field(
        default="both",
        metadata={"help": "SDXL: which text encoder(s) learn: both, text_encoder (CLIP-L) or text_encoder_2 "
                          "(OpenCLIP bigG); the other stays frozen. One-encoder pipelines: both = text_encoder."},
    )

    def validate(self) -> None:
        _check(bool(self.base_model), "model.base_model is empty.")
        _choice("model", "dtype", self.dtype, ("auto", "float32", "float16", "bfloat16"))
        _choice("model", "mixed_precision", self.mixed_precision, ("auto", "no", "fp16", "bf16"))
        _choice("model", "encoders", self.encoders, ("both", "text_encoder", "text_encoder_2"))


@dataclass
class UnlearnConfig(_Section):
    """ESD-style negative-guidance unlearning loss."""

    negative_guidance: float = field(
        default=1.0, metadata={"help": "eta in target = eps0(x_t,'') - eta * (eps0(x_t,c) - eps0(x_t,''))."}
    )
    start_guidance: float = field(default=3.0, metadata={"help": "CFG scale of the frozen model when sampling x_t."})
    ddim_steps: int = field(default=50, metadata={"help": "DDIM steps of the x_t trajectories (t is drawn among them)."})
    ddim_eta: float = field(default=0.0, metadata={"help": "DDIM eta (0 = deterministic)."})
    batch_size: int = field(default=1, metadata={"help": "x_t samples per iteration in the unlearning loss."})
    include_clean: bool = field(
        default=False,
        metadata={"help": "After the warm-up, also apply the loss to the clean concept prompt (besides the adversarial one)."},
    )

    def validate(self) -> None:
        _positive("unlearn", "negative_guidance", self.negative_guidance, allow_zero=True)
        _positive("unlearn", "start_guidance", self.start_guidance)
        _check(isinstance(self.ddim_steps, int) and self.ddim_steps >= 1, "unlearn.ddim_steps must be an integer >= 1.")
        _positive("unlearn", "ddim_eta", self.ddim_eta, allow_zero=True)
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, "unlearn.batch_size must be an integer >= 1.")


@dataclass
class SamplingConfig(_Section):
    """Reuse of the frozen model's x_t trajectories across iterations.

    A trajectory of the frozen model does not depend on the encoder being trained, and its
    DDIM run already computes eps0(x_t, c) and eps0(x_t, '') at every step, so one trajectory
    gives ``ddim_steps`` (x_t, target) pairs. ``pool=0`` is the reference behaviour: a fresh
    partial trajectory (and its targets) every iteration.
    """

    pool: int = field(default=0, metadata={"help": "Concept trajectories kept (0 = sample a fresh x_t every iteration, as the reference)."})
    retain_pool: int = field(default=0, metadata={"help": "Retain-prompt trajectories kept (0 = fresh every iteration)."})
    refresh_every: int = field(default=10, metadata={"help": "Replace the oldest trajectories every N iterations."})
    refresh: int = field(default=1, metadata={"help": "Trajectories replaced per refresh (pool sizes must be multiples of it)."})
    prompt_order: str = field(default="random", metadata={
        "help": "Prompts of new pooled trajectories: random (independent draws) or cycle (every prompt once per pass "
                "over the prompt set, in a seeded order: each prompt equally often)."})

    def validate(self) -> None:
        for n in ("pool", "retain_pool"):
            v = getattr(self, n)
            _check(isinstance(v, int) and v >= 0, f"sampling.{n} must be an integer >= 0, got {v!r}.")
        _check(isinstance(self.refresh, int) and self.refresh >= 1, "sampling.refresh must be an integer >= 1.")
        _check(isinstance(self.refresh_every, int) and self.refresh_every >= 1, "sampling.refresh_every must be >= 1.")
        _choice("sampling", "prompt_order", self.prompt_order, ("random", "cycle"))
        for n in ("pool", "retain_pool"):
            v = getattr(self, n)
            _check(
                v % self.refresh == 0,
                f"sampling.{n}={v} must be a multiple of sampling.refresh={self.refresh} (whole refresh chunks).",
            )


@dataclass
class AttackSettings(_Section):
    """The inner adversarial prompt attack (see ``robust_encoders.attacks.PromptAttackConfig``)."""

    enabled: bool = field(default=True, metadata={"help": "Adversarial training on; false = plain ESD on the text encoder."})
    warmup: int = field(default=200, metadata={"help": "Iterations of plain unlearning before the first attack."})
    every: int = field(
        default=1, metadata={"help": "Re-run the attack every N iterations (the last adversarial prompt is reused between)."}
    )
    mode: str = field(
        default="continuous",
        metadata={
            "help": "continuous (soft tokens, AdvUnlearn), discrete (relaxed one-hot, projected to real tokens), gcg "
            "(greedy coordinate gradient search over real tokens, the evaluation's UnlearnDiffAtk search; uses "
            "candidates, topk; ignores lr, optimizer), or derived (RECE-style: derive "
            "concept-token embeddings that make the current encoder reproduce the original encoder's output for the "
            "forget prompts; encoder passes only, no UNet; uses steps, lr, optimizer, init, eps; ignores k, position). "
            "Naming attack.mode (an override, or a recipe extending another) without attack.chain_modes gives "
            "every chain that mode: the per-chain modes it would otherwise inherit (the miniature recipes' soft + "
            "GCG chains) are dropped with their chain_steps, chain_k and chain count unless those are named too, so "
            "attack.mode=continuous alone is one soft-token chain."
        },
    )
    steps: int = field(default=30, metadata={"help": "Attack optimisation steps."})
    lr: float = field(default=1e-3, metadata={"help": "Attack step size."})
    k: int = field(default=1, metadata={"help": "Adversarial tokens per prompt."})
    position: str = field(default="prefix", metadata={"help": "prefix | suffix | replace."})
    optimizer: str = field(default="adam", metadata={"help": "adam, or sign (signed-gradient 'fast AT')."})
    init: str = field(
        default="warm", metadata={"help": "random | token | warm (continue from the previous round, AdvUnlearn's 'latest')."}
    )
    eps: float | None = field(default=None, metadata={"help": "L-inf bound of continuous soft tokens; null = unbounded."})
    bound: str = field(
        default="none",
        metadata={"help": "none | vocab: keep continuous soft tokens inside the hull of the real token embeddings "
                  "(their bounding box and largest norm) instead of letting them drift far off the vocabulary."},
    )
    candidates: int = field(
        default=16, metadata={"help": "mode=gcg: single-slot token swaps scored per prompt and attack step."}
    )
    topk: int = field(
        default=64, metadata={"help": "mode=gcg: most promising tokens per slot (by gradient) to draw the swaps from."}
    )
    eval_batch: int = field(
        default=32,
        metadata={"help": "mode=gcg: candidate prompts scored per UNet call, without gradients (engine.micro_batch "
                  "chunks only the passes that back-propagate). Miniature soft + GCG chains ([8, 2] steps, 16 "
                  "candidates x 4 prompts): 4 per call 1.10 s/it, 34 0.90 s/it at 32.5 MB peak tensors, 64 0.89 "
                  "s/it at 46.7 MB; lower it for a large UNet."},
    )
    chains: int = field(
        default=1,
        metadata={
            "help": "Independent warm-started adversarial prompts, taken in turn (one per attack round): with init=warm "
            "each chain continues its own last round, so the encoder meets several adversaries instead of one."
        },
    )
    chain_modes: list[str] | None = field(
        default=None,
        metadata={"help": "One attack mode per chain (as many as attack.chains), e.g. [continuous, gcg] with chains=2: "
                  "rounds alternate between the soft-token and the real-token adversary, each chain continuing its "
                  "own last round; bound and eps apply to the continuous chains only. null = attack.mode for all."},
    )
    chain_steps: list[int | None] | None = field(
        default=None,
        metadata={"help": "Attack steps per chain (as many as attack.chains), e.g. [null, 2] beside chain_modes "
                  "[continuous, gcg]: the soft chain runs attack.steps, the GCG chain 2 (a GCG step scores candidates "
                  "x prompts sequences). A null entry = attack.steps; null = attack.steps for every chain."},
    )
    chain_k: list[int | None] | None = field(
        default=None,
        metadata={"help": "Adversarial tokens per chain (as many as attack.chains), e.g. [null, 5] beside chain_modes "
                  "[continuous, gcg]: the soft chain keeps attack.k tokens, the GCG chain searches 5 real tokens (as "
                  "the evaluation's UnlearnDiffAtk k=5 does). A null entry = attack.k; null = attack.k for every chain."},
    )
    restart_every: int = field(
        default=0,
        metadata={"help": "Every N-th attack round starts its chain afresh from random real tokens and runs "
                  "restart_steps steps (an evaluation-strength adversary now and then); 0 = never."},
    )
    restart_steps: int = field(default=60, metadata={"help": "Steps of a restarted round (restart_every > 0)."})
    resample_xt: bool = field(
        default=False,
        metadata={"help": "Every attack step draws another x_t of each prompt's pooled trajectory (a new timestep), "
                  "as the evaluation attacks do, instead of fitting the iteration's one (x_t, t); needs sampling.pool > 0."},
    )

    def validate(self) -> None:
        _check(isinstance(self.warmup, int) and self.warmup >= 0, "attack.warmup must be an integer >= 0.")
        _check(isinstance(self.chains, int) and self.chains >= 1, "attack.chains must be an integer >= 1.")
        _check(isinstance(self.restart_every, int) and self.restart_every >= 0, "attack.restart_every must be >= 0.")
        _check(isinstance(self.restart_steps, int) and self.restart_steps >= 1, "attack.restart_steps must be >= 1.")
        _check(isinstance(self.every, int) and self.every >= 1, "attack.every must be an integer >= 1.")
        _check(self.bound == "none" or self.mode != "derived",
               "attack.bound limits the soft tokens of attack.mode=continuous; the derived attack bounds its "
               "embeddings with attack.eps. Use attack.bound=none with attack.mode=derived.")
        if self.chain_modes is not None:
            _check(len(self.chain_modes) == self.chains,
                   f"attack.chain_modes names {len(self.chain_modes)} mode(s) for attack.chains={self.chains}; give one "
                   f"mode per chain, e.g. attack.chains=2 attack.chain_modes=[continuous,gcg] (or name one mode, "
                   f"e.g. attack.mode=continuous, for a single chain of it).")
            for m in self.chain_modes:
                _check(m in ("continuous", "discrete", "gcg"),
                       f"attack.chain_modes: {m!r} is not a chain mode; choose from continuous, discrete, gcg.")
            _check(self.mode == "continuous", f"attack.chain_modes sets every chain's mode, so attack.mode={self.mode} "
                   "would have no effect. Leave attack.mode at continuous with attack.chain_modes (or drop "
                   "attack.chain_modes to use one mode for every chain).")
        self._check_per_chain("chain_steps", "step count", "steps", 0, "[8,2]")
        self._check_per_chain("chain_k", "token count", "k", 1, "[null,5] (null = attack.k)")
        _check(not (self.resample_xt and "gcg" in self.modes),
               "attack.resample_xt draws a new x_t per gradient step; a gcg attack (attack.mode=gcg, or a gcg entry "
               "of attack.chain_modes) compares its candidates on one x_t per step and does not support it. Use "
               "attack.resample_xt=false with attack.mode=gcg, or name attack.mode=continuous (one soft chain).")
        try:
            for chain in range(self.chains):
                self.to_prompt_attack_config(0, chain)
        except ValueError as exc:
            raise ConfigError(str(exc).replace("PromptAttackConfig.", "attack.")) from None

    @property
    def modes(self) -> list[str]:
        """The attack mode of each chain."""
        return list(self.chain_modes) if self.chain_modes is not None else [self.mode] * self.chains

    def _check_per_chain(self, name: str, noun: str, default: str, minimum: int, example: str) -> None:
        """A per-chain list (``chain_steps``, ``chain_k``): one entry per chain, each null (``attack.<default>``) or
        an integer >= ``minimum``."""
        entries = getattr(self, name)
        if entries is None:
            return
        _check(len(entries) == self.chains, f"attack.{name} gives {len(entries)} {noun}(s) for attack.chains="
               f"{self.chains}; give one per chain, e.g. attack.{name}={example}.")
        _check(all(n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= minimum) for n in entries),
               f"attack.{name} must be integers >= {minimum} (or null for attack.{default}).")

    def _per_chain(self, entries: list[int | None] | None, default: int) -> list[int]:
        """Resolve a per-chain list: null (the whole list or an entry) is ``default``."""
        return [default] * self.chains if entries is None else [default if n is None else n for n in entries]

    @property
    def steps_per_chain(self) -> list[int]:
        """The attack steps of each chain."""
        return self._per_chain(self.chain_steps, self.steps)

    @property
    def k_per_chain(self) -> list[int]:
        """The adversarial tokens of each chain."""
        return self._per_chain(self.chain_k, self.k)

    def to_prompt_attack_config(self, seed: int, chain: int = 0):
        """The matching ``PromptAttackConfig`` of ``chain`` (``seed`` varies per round; mode=derived validates as
        continuous; with ``chain_modes``, eps and bound reach the continuous chains only)."""
        from ..attacks import PromptAttackConfig

        mode = self.modes[chain]
        soft = mode in ("continuous", "derived")
        return PromptAttackConfig(
            mode="continuous" if mode == "derived" else mode,
            steps=self.steps_per_chain[chain], lr=float(self.lr), k=self.k_per_chain[chain],
            position=self.position, optimizer=self.optimizer, init=self.init,
            eps=self.eps if soft or self.chain_modes is None else None,
            bound=self.bound if soft or self.chain_modes is None else "none", seed=int(seed),
            candidates=self.candidates, topk=self.topk, eval_batch=self.eval_batch,
        )


@dataclass
class RetainConfig(_Section):
    """Utility regulariser on ordinary prompts."""

    space: str = field(
        default="unet",
        metadata={
            "help": "unet: weight * MSE(eps(x_r, E(c_r)), eps0(x_r, E0(c_r))) (AdvUnlearn); "
            "encoder: weight * MSE(E(c_r), E0(c_r)) (no UNet pass); both: the UNet term plus "
            "encoder_weight * the encoder term; none."
        },
    )
    weight: float = field(default=0.5, metadata={"help": "gamma (AdvUnlearn: 0.3 for nudity, 0.5 for styles and objects)."})
    encoder_weight: float = field(
        default=0.0, metadata={"help": "space=both: weight of the encoder-space term MSE(E(c_r), E0(c_r))."}
    )
    batch_size: int = field(default=5, metadata={"help": "Retain prompts per iteration."})
    prompts: str = field(
        default="auto",
        metadata={
            "help": "auto (bundled list for real SD; miniature captions not naming the concept), or a path to a .txt "
            "(one prompt per line) or .csv (column 'prompt')."
        },
    )
    num_prompts: int = field(default=300, metadata={"help": "Miniature only: how many retain captions to generate."})
    include_empty: bool = field(
        default=False,
        metadata={"help": "Add the empty prompt '' to the retain set (keeps the unconditional branch of CFG in place)."},
    )

    def validate(self) -> None:
        _choice("retain", "space", self.space, ("unet", "encoder", "both", "none"))
        _positive("retain", "weight", self.weight, allow_zero=True)
        _positive("retain", "encoder_weight", self.encoder_weight, allow_zero=True)
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, "retain.batch_size must be an integer >= 1.")
        _check(isinstance(self.num_prompts, int) and self.num_prompts >= 1, "retain.num_prompts must be >= 1.")


@dataclass
class LoraSettings(_Section):
    """peft LoRA adapter on the text encoder (trainable.part=lora)."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale alpha / r)."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        metadata={"help": "Module names to adapt (CLIP: q_proj k_proj v_proj out_proj fc1 fc2)."},
    )

    def validate(self) -> None:
        _check(isinstance(self.rank, int) and self.rank >= 1, "trainable.lora.rank must be an integer >= 1.")
        _positive("trainable.lora", "alpha", self.alpha)
        _check(0 <= self.dropout < 1, "trainable.lora.dropout must be in [0, 1).")
        _check(bool(self.targets), "trainable.lora.targets is empty; name the modules to adapt (e.g. [q_proj, v_proj]).")


@dataclass
class TrainableConfig(_Section):
    """Which part of the text encoder learns."""

    part: str = field(
        default="all",
        metadata={"help": "all | first_k (the first `layers` transformer layers) | attention | mlp | lora."},
    )
    layers: int = field(default=1, metadata={"help": "first_k: how many layers from the input side."})
    train_embeddings: bool = field(default=False, metadata={"help": "Also train the token/position embeddings."})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings."})

    def validate(self) -> None:
        _choice("trainable", "part", self.part, ("all", "first_k", "attention", "mlp", "lora"))
        _check(isinstance(self.layers, int) and self.layers >= 1, "trainable.layers must be an integer >= 1.")
        self.lora.validate()


@dataclass
class OptimConfig(_Section):
    """Optimiser of the trainable parameters."""

    lr: float = field(default=1e-5, metadata={"help": "Learning rate (AdvUnlearn: 1e-5)."})
    optimizer: str = field(default="adam", metadata={"help": "adam | adamw | sgd."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay."})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "Adam betas."})
    grad_clip: float | None = field(default=None, metadata={"help": "Clip the gradient norm (null = off)."})
    lr_warmup: int = field(default=0, metadata={"help": "Linear learning-rate warm-up iterations."})
    schedule: str = field(default="constant", metadata={
        "help": "constant (AdvUnlearn) | cosine: after the warm-up the learning rate follows a half cosine from lr "
                "down to 0 at the last iteration (a function of the step alone, so resuming stays exact; growing "
                "`iterations` on --resume stretches the rest of the curve)."})
    grad_surgery: str = field(
        default="none",
        metadata={
            "help": "none, or per_tensor (DoCo's concept-preserving gradient, Wu et al. 2024): the forget and retain "
            "losses are back-propagated separately and, per parameter tensor where the two gradients conflict "
            "(negative dot product), the forget gradient loses its component along the retain gradient "
            "(PCGrad-style projection) before the step. Default none = AdvUnlearn."
        },
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "Keep an exponential moving average of the trained weights (diffusers' EMAModel, with its "
            "(1+n)/(10+n) warm-up) and export it instead of the last iterate; 0.99 averages over roughly the last "
            "100 iterations. Training itself, and the inner attack, use the live weights. null = off."
        },
    )
    ema_start: int = field(default=0, metadata={
        "help": "Iterations before the moving average starts following the weights (e.g. attack.warmup)."})

    def validate(self) -> None:
        _positive("optim", "lr", self.lr)
        _choice("optim", "optimizer", self.optimizer, ("adam", "adamw", "sgd"))
        _positive("optim", "weight_decay", self.weight_decay, allow_zero=True)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas must be two numbers in [0, 1).")
        if self.grad_clip is not None:
            _positive("optim", "grad_clip", self.grad_clip)
        _check(isinstance(self.lr_warmup, int) and self.lr_warmup >= 0, "optim.lr_warmup must be an integer >= 0.")
        _choice("optim", "schedule", self.schedule, ("constant", "cosine"))
        _choice("optim", "grad_surgery", self.grad_surgery, ("none", "per_tensor"))
        if self.ema_decay is not None:
            _check(isinstance(self.ema_decay, (int, float)) and 0 < self.ema_decay < 1,
                   f"optim.ema_decay must be a number in (0, 1) such as 0.99 (or null to export the last iterate); "
                   f"got {self.ema_decay!r}.")
        _check(isinstance(self.ema_start, int) and self.ema_start >= 0, "optim.ema_start must be an integer >= 0.")


@dataclass
class CheckpointConfig(_Section):
    """Periodic, atomic checkpoints under RUN_DIR/checkpoints."""

    every: int = field(default=100, metadata={"help": "Save every N iterations (a killed run loses at most N)."})
    keep: int = field(default=2, metadata={"help": "Checkpoints kept (older ones are deleted)."})

    def validate(self) -> None:
        _check(isinstance(self.every, int) and self.every >= 1, "checkpoint.every must be an integer >= 1.")
        _check(isinstance(self.keep, int) and self.keep >= 1, "checkpoint.keep must be an integer >= 1.")


@dataclass
class LogConfig(_Section):
    """Progress bar and JSONL log."""

    every: int = field(default=1, metadata={"help": "Write a log.jsonl line every N iterations."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar (main process only)."})

    def validate(self) -> None:
        _check(isinstance(self.every, int) and self.every >= 1, "log.every must be an integer >= 1.")


@dataclass
class EngineConfig(_Section):
    """Engineering switches; the defaults are the fast path. Turn them off to emulate the reference code."""

    share_unet: bool = field(
        default=True, metadata={"help": "One frozen UNet serves both branches (false: a second UNet copy, as the reference)."}
    )
    cache_original: bool = field(
        default=True,
        metadata={"help": "Cache the frozen encoder's outputs for fixed prompts (false: recompute them every time)."},
    )
    fused_unet_batch: bool = field(
        default=True, metadata={"help": "Run the unlearning and retain UNet passes as one batched call."}
    )
    micro_batch: int = field(
        default=0,
        metadata={
            "help": "Back-propagate the update and every inner attack step in chunks of this many samples "
            "(gradients accumulate; only one chunk's activations are alive). 0 = one pass. 1 keeps peak memory at a "
            "batch-1 pass on SD-sized models."
        },
    )

    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute the frozen UNet's block activations during back-propagation instead of keeping them "
            "(diffusers' enable_gradient_checkpointing): less peak memory for one more UNet forward per backward. "
            "Only passes that back-propagate (attack and update) are affected; the gradient is the same."
        },
    )

    release_original_encoder: bool = field(
        default=True,
        metadata={
            "help": "Once the frozen encoder's outputs for every prompt the run uses are cached, free the frozen "
            "encoder copy (one text encoder less in memory; same results). Needs engine.cache_original; kept when an "
            "option encodes new text with it (anchor.kind=adversarial, neighbors, token_focus.mode=eot). Not needed "
            "when a given pipeline's own encoder, already in the frozen dtype, is the frozen original."
        },
    )

    share_frozen_weights: bool = field(
        default=True,
        metadata={
            "help": "Copies of a text encoder (the trained one made from a given pipeline's, a frozen original) "
            "share every tensor that is not trained instead of duplicating it (the token embedding table at least); "
            "false: full copies, as the reference."
        },
    )

    def validate(self) -> None:
        _check(isinstance(self.micro_batch, int) and self.micro_batch >= 0, "engine.micro_batch must be an integer >= 0.")


# ----------------------------------------------------------------------------------------------------------------
# Trainer options from the concept-erasure literature (mechanisms in training/options.py). Every default keeps the
# option off, so the AdvUnlearn reference is unchanged; the values used once an option is switched on are marked
# with where they come from. "our choice" means the paper gives no number for this setting (or its public code is
# not reachable offline) and the value was picked for the miniature world.
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class AnchorConfig(_Section):
    """AdvAnchor (Zhao et al., arXiv 2501.00054): an adversarial anchor replaces the empty prompt in the unlearning target.

    With ``kind: adversarial`` the target is ``eps0(x_t, a) - eta * (eps0(x_t, c) - eps0(x_t, a))`` where
    ``a = E0(tokens(c) + delta)``: the forget prompt with a universal perturbation ``delta`` added to the concept's
    token embeddings (``unlearn.negative_guidance=0`` gives AdvAnchor's loss ``||eps(x_t, c) - eps0(x_t, a)||^2``).
    ``delta`` is kept across iterations, bounded per token by ``radius * ||e_token||`` and refreshed every
    ``every`` iterations by ``steps`` normalised-gradient ascent steps on the disagreement ``1 - cos`` between the
    anchor's and the concept's guidance directions ``eps0(x_t, a) - eps0(x_t, '')`` and ``eps0(x_t, c) - eps0(x_t, '')``.
    """

    kind: str = field(
        default="empty", metadata={"help": "empty (the '' anchor of ESD/AdvUnlearn) or adversarial (AdvAnchor)."}
    )
    radius: float = field(
        default=0.5,
        metadata={"help": "Bound of delta per concept token, as a multiple of that token's embedding norm (our choice)."},
    )
    steps: int = field(default=3, metadata={"help": "Ascent steps per refresh of delta (our choice)."})
    lr: float = field(
        default=0.1, metadata={"help": "Ascent step length, as a multiple of the token's embedding norm (our choice)."}
    )
    every: int = field(default=10, metadata={"help": "Refresh delta every N iterations (our choice)."})

    def validate(self) -> None:
        _choice("anchor", "kind", self.kind, ("empty", "adversarial"))
        _positive("anchor", "radius", self.radius)
        _check(isinstance(self.steps, int) and self.steps >= 1, "anchor.steps must be an integer >= 1.")
        _positive("anchor", "lr", self.lr)
        _check(isinstance(self.every, int) and self.every >= 1, "anchor.every must be an integer >= 1.")


@dataclass
class NeighborsConfig(_Section):
    """RealEra (arXiv 2024): neighbour-concept mining around the concept's token embeddings.

    Every iteration, ``k`` perturbations ``eta`` of each concept token embedding ``e`` (a random direction
    orthogonal to ``e``, length ``||e|| * tan(theta)`` for a cosine ``cos(theta)`` drawn uniformly from the band) with
    ``||eta|| <= radius * ||e||`` and ``cos(e, e + eta)`` in ``[s1, s2]`` are erased like the concept (forget batch,
    on the concept's ``x_t`` and target); ``k`` more with ``cos < s1`` are kept in place (retain batch, encoder space:
    ``retain_weight * MSE(E(p_eta), E0(p_eta))``, RealEra's beyond-concept regularisation).
    """

    k: int = field(default=0, metadata={"help": "Neighbours per batch (forget and retain each); 0 = off."})
    s1: float = field(
        default=0.5,
        metadata={
            "help": "Lower cosine of the forget band; below it, the retain batch (our choice: in the miniature "
            "token space a neighbour at cos >= 0.7 still reads as the concept, at cos < 0.5 mostly as another one)."
        },
    )
    s2: float = field(default=0.95, metadata={"help": "Upper cosine of the forget band (our choice)."})
    radius: float = field(
        default=4.0,
        metadata={"help": "D: the largest ||eta||, as a multiple of ||e|| (our choice; 4 reaches cos 0.24)."},
    )
    weight: float = field(default=1.0, metadata={"help": "Weight of the neighbour forget term (our choice)."})
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the neighbour retain term (our choice)."})

    def validate(self) -> None:
        _check(isinstance(self.k, int) and self.k >= 0, "neighbors.k must be an integer >= 0.")
        _check(0 < self.s1 < self.s2 < 1, f"neighbors needs 0 < s1 < s2 < 1, got s1={self.s1}, s2={self.s2}.")
        _positive("neighbors", "radius", self.radius)
        lowest = 1.0 / math.sqrt(1.0 + float(self.radius) ** 2)
        _check(
            lowest < self.s1,
            f"neighbors.radius={self.radius} only reaches cos >= {lowest:.3f}, so no neighbour falls below "
            f"s1={self.s1} (the retain batch); raise radius or s1.",
        )
        _positive("neighbors", "weight", self.weight, allow_zero=True)
        _positive("neighbors", "retain_weight", self.retain_weight, allow_zero=True)


@dataclass
class TokenFocusConfig(_Section):
    """TRCE (arXiv 2025): map the forget prompts' [EoT] embeddings to those of a safe prompt.

    With ``mode: eot`` an encoder-space term ``weight * MSE(E(c)[EoT...], E0(c_safe)[EoT...])`` is added for the clean
    and adversarial forget prompts, over the end-of-text token and the padding after it (aligned by offset from the
    first EoT), where ``c_safe`` is the prompt with the concept word replaced by ``safe_text``. ``hinge_weight`` adds
    TRCE's contrastive idea in encoder space: ``max(0, d(E(c), E0(c_safe)) - d(E(c), E0(c)) + margin)``.
    """

    mode: str = field(default="all", metadata={"help": "all (no extra term, AdvUnlearn) or eot (TRCE's [EoT] mapping)."})
    weight: float = field(default=1.0, metadata={"help": "Weight of the EoT mapping term (our choice)."})
    safe_text: str = field(
        default="", metadata={"help": "Replaces the concept word in the safe prompt ('' drops it; our choice)."}
    )
    hinge_weight: float = field(default=0.0, metadata={"help": "Weight of the hinge term (0 = off; our choice)."})
    margin: float = field(default=0.0, metadata={"help": "Margin of the hinge term (our choice)."})

    def validate(self) -> None:
        _choice("token_focus", "mode", self.mode, ("all", "eot"))
        _positive("token_focus", "weight", self.weight, allow_zero=True)
        _positive("token_focus", "hinge_weight", self.hinge_weight, allow_zero=True)
        _positive("token_focus", "margin", self.margin, allow_zero=True)


@dataclass
class SeedsConfig(_Section):
    """Seeds of the run's separate random streams; ``null`` (the default) takes the run's ``seed``.

    Two runs that differ in one stream only tell which source of randomness a result depends on (fix all
    streams but one: ``seed=2 seeds.forget_pool=0`` is seed 2 with seed 0's forget trajectories).
    """

    forget_pool: int | None = field(
        default=None, metadata={"help": "The forget pool's frozen-model trajectories (prompts and noise)."}
    )
    retain_pool: int | None = field(
        default=None, metadata={"help": "The retain pool's frozen-model trajectories (prompts and noise)."}
    )
    retain_prompts: int | None = field(
        default=None, metadata={"help": "Which miniature retain captions the run draws (retain.prompts=auto)."}
    )
    attack: int | None = field(default=None, metadata={"help": "Initial tokens of the inner attack's rounds."})
    step: int | None = field(
        default=None,
        metadata={"help": "Per-iteration draws: which pooled x_t, timesteps and retain prompts an update uses."},
    )
    init: int | None = field(default=None, metadata={"help": "LoRA initialisation and seeded option set-up."})

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            _check(v is None or (isinstance(v, int) and not isinstance(v, bool)),
                   f"seeds.{f.name} must be an integer or null (the run's seed), got {v!r}.")


@dataclass
class TrainConfig:
    """A complete, resolved training recipe."""

    recipe: str = field(default="custom", metadata={"help": "Recipe name (written to robust_encoder.json)."})
    seed: int = field(default=0, metadata={"help": "Seed of everything random (per-process streams derive from it)."})
    iterations: int = field(default=1000, metadata={"help": "Optimiser steps (AdvUnlearn: 1000)."})
    seeds: SeedsConfig = field(
        default_factory=SeedsConfig, metadata={"help": "Per-stream seeds (null: the run's seed)."}
    )
    concept: ConceptConfig = field(default_factory=ConceptConfig, metadata={"help": "What to erase."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Base pipeline."})
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig, metadata={"help": "Unlearning loss."})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "x_t trajectory reuse."})
    attack: AttackSettings = field(default_factory=AttackSettings, metadata={"help": "Inner attack."})
    retain: RetainConfig = field(default_factory=RetainConfig, metadata={"help": "Retain regulariser."})
    trainable: TrainableConfig = field(default_factory=TrainableConfig, metadata={"help": "Trainable part."})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "Optimiser."})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"help": "Checkpoints."})
    log: LogConfig = field(default_factory=LogConfig, metadata={"help": "Logging."})
    engine: EngineConfig = field(default_factory=EngineConfig, metadata={"help": "Engineering switches."})
    anchor: AnchorConfig = field(default_factory=AnchorConfig, metadata={"help": "Anchor of the unlearning target (AdvAnchor)."})
    neighbors: NeighborsConfig = field(
        default_factory=NeighborsConfig, metadata={"help": "Neighbour-concept mining (RealEra)."}
    )
    token_focus: TokenFocusConfig = field(
        default_factory=TokenFocusConfig, metadata={"help": "EoT-focused mapping term (TRCE)."}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every section (called on construction and after overrides)."""
        _check(isinstance(self.iterations, int) and self.iterations >= 1, "iterations must be an integer >= 1.")
        _check(isinstance(self.seed, int), "seed must be an integer.")
        for f in fields(self):
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v):
                v.validate()
        _check(
            not self.attack.resample_xt or self.sampling.pool > 0,
            "attack.resample_xt=true draws other steps of pooled trajectories: set sampling.pool > 0 "
            "(e.g. sampling.pool=16), or attack.resample_xt=false.",
        )

    # -- conversions ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a nested mapping; unknown keys raise :class:`ConfigError` with a suggestion."""
        return _build(cls, dict(data), "")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)

    def to_yaml(self, header: str | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)
        return (header.rstrip() + "\n" if header else "") + text

    def fingerprint(self, ignore: Iterable[str] = ()) -> str:
        """A hash of the config without the dotted keys in ``ignore`` (to detect a different run)."""
        d = self.comparable_dict()
        if all(v is None for v in d["seeds"].values()):
            d.pop("seeds")  # the default: same fingerprint as a run made before per-stream seeds existed
        for key, default in _ADDED_LATER.items():  # likewise for keys added later, while they keep their default
            section, name = key.split(".")
            if d.get(section, {}).get(name) == default:
                d[section].pop(name)
        for key in ignore:
            parts = key.split(".")
            cur = d
            for p in parts[:-1]:
                cur = cur.get(p, {})
            cur.pop(parts[-1], None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def comparable_dict(self) -> dict[str, Any]:
        """``to_dict()`` with what two configs must agree on to make the same run spelled one way: per-chain attack
        steps as numbers (``attack.chain_steps=[null, 2]`` with ``attack.steps=8`` is ``[8, 2]``), per-chain tokens
        likewise, and as null where every chain has ``attack.k`` (``attack.chain_k=[null, 3]`` with ``attack.k=3``).

        Example:
            >>> a = apply_overrides(TrainConfig(), ["attack.chains=2", "attack.steps=8", "attack.chain_steps=[null,2]"])
            >>> a.comparable_dict()["attack"]["chain_steps"]
            [8, 2]
        """
        d = self.to_dict()
        if self.attack.chain_steps is not None:
            d["attack"]["chain_steps"] = self.attack.steps_per_chain
        if self.attack.chain_k is not None:
            ks = self.attack.k_per_chain
            d["attack"]["chain_k"] = None if ks == [self.attack.k] * self.attack.chains else ks
        return d

    def stream_seed(self, stream: str) -> int:
        """The seed of one random stream (``seeds.<stream>``, else the run's ``seed``).

        Example:
            >>> cfg = TrainConfig(seed=2, seeds=SeedsConfig(forget_pool=0))
            >>> cfg.stream_seed("forget_pool"), cfg.stream_seed("attack")
            (0, 2)
        """
        value = getattr(self.seeds, stream)
        return self.seed if value is None else value

    @property
    def is_miniature(self) -> bool:
        return self.model.base_model == MINIATURE


# ----------------------------------------------------------------------------------------------------------------
# dict -> dataclass with type coercion and closest-key suggestions
# ----------------------------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _all_keys(cls, prefix: str = "") -> list[str]:
    out = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        t = _hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            out.extend(_all_keys(t, key + "."))
    return out


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, valid: list[str], root_cls=TrainConfig) -> ConfigError:
    everything = _all_keys(root_cls)
    leaf = key.split(".")[-1]
    close = [k for k in everything if k.split(".")[-1] == leaf and k != key]
    if not close:
        close = difflib.get_close_matches(key, everything, n=1, cutoff=0.6)
    if close:
        hint = " Did you mean " + " or ".join(repr(c) for c in close[:3]) + "?"
    else:
        hint = f" Valid keys here: {', '.join(valid)}."
    return ConfigError(f"Unknown config key {key!r}.{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {get_args(tp)}.")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}.")
        (inner,) = get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()) and float(value).is_integer():
            return int(float(value))
        raise ConfigError(f"{key} must be an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}.")
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}.")
        return value
    return value


def _build(cls, data: dict[str, Any], prefix: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'the recipe'} must be a mapping, got {data!r}.")
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise _unknown(f"{prefix}{key}", names)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name] or {}, key + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'}: {exc}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"attack.steps=5"`` -> ``("attack.steps", 5)`` (the value is parsed as YAML)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"Override {text!r} is not KEY=VALUE (e.g. attack.steps=5).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"Override {text!r} has an empty key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    cls: Any = TrainConfig
    for i, p in enumerate(parts):
        names = [f.name for f in fields(cls)]
        if p not in names:
            raise _unknown(key, [".".join(parts[:i] + [n]) for n in names])
        tp = _hints(cls)[p]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.{fields(tp)[0].name}=...")
                cur[p] = _merge(cur.get(p) or {}, dict(value))
            else:
                cur[p] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a section, so {key!r} does not exist.")
        cur = cur.setdefault(p, {})
        cls = tp


def _one_mode_if_named(d: dict[str, Any], named: Iterable[str]) -> None:
    """``attack.mode`` named (by overrides, or by a recipe over the one it extends) without ``attack.chain_modes``:
    every chain takes that mode, so drop the per-chain modes ``d`` holds from below, with their per-chain steps,
    tokens and chain count unless those are named too (``attack.mode=continuous`` alone: one soft chain)."""
    named = set(named)
    attack = d.get("attack")
    if ("attack.mode" not in named or "attack.chain_modes" in named or not isinstance(attack, dict)
            or attack.get("chain_modes") is None):
        return
    attack["chain_modes"] = None
    for key in ("chain_steps", "chain_k"):
        if f"attack.{key}" not in named:
            attack[key] = None
    if "attack.chains" not in named:
        attack["chains"] = 1


def _named(key: str, value: Any) -> list[str]:
    """The dotted keys that setting ``key`` to ``value`` names (a section's keys for ``attack={mode: gcg}``)."""
    return [f"{key}.{k}" for k in value] if isinstance(value, Mapping) else [key]


def _apply(d: dict[str, Any], overrides: Iterable[str | tuple[str, Any]]) -> dict[str, Any]:
    named = []
    for ov in overrides:
        key, value = parse_override(ov) if isinstance(ov, str) else ov
        _set_dotted(d, key, value)
        named += _named(key.strip(), value)
    _one_mode_if_named(d, named)
    return d


def apply_overrides(config: TrainConfig | Mapping[str, Any], overrides: Iterable[str | tuple[str, Any]]) -> TrainConfig:
    """Apply dotted ``KEY=VALUE`` overrides (strings or (key, value) pairs) and re-validate.

    Naming ``attack.mode`` without ``attack.chain_modes`` gives every chain that mode (one chain unless
    ``attack.chains`` is named too).

    Example:
        >>> mixed = apply_overrides(TrainConfig(), ["attack.chains=2", "attack.chain_modes=[continuous,gcg]"])
        >>> mixed.attack.modes, apply_overrides(mixed, ["attack.mode=gcg"]).attack.modes
        (['continuous', 'gcg'], ['gcg'])
    """
    d = config.to_dict() if isinstance(config, TrainConfig) else copy.deepcopy(dict(config))
    return TrainConfig.from_dict(_apply(d, overrides))


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_recipe_dict(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's mapping with its ``extends`` chain merged in (not validated)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Recipe file {path} does not exist.")
    if path.resolve() in _seen:
        raise ConfigError(f"Recipe {path} extends itself (cycle: {' -> '.join(map(str, _seen))}).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Recipe {path} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"Recipe {path} must be a YAML mapping at the top level.")
    data = dict(data)
    parent = data.pop("extends", None)
    if parent:
        ppath = Path(parent)
        if not ppath.suffix:
            ppath = ppath.with_suffix(".yaml")
        if not ppath.is_absolute():
            ppath = path.parent / ppath
        base = load_recipe_dict(ppath, _seen + (path.resolve(),))
        named = _named("attack", data["attack"]) if "attack" in data else []
        data = _merge(base, data)
        _one_mode_if_named(data, named)
    data.setdefault("recipe", path.stem)
    return data


def load_recipe(path: str | Path, overrides: Iterable[str | tuple[str, Any]] = ()) -> TrainConfig:
    """Load a YAML recipe (following ``extends``), apply overrides, validate."""
    return TrainConfig.from_dict(_apply(load_recipe_dict(path), overrides))


def config_help(cls=TrainConfig, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every leaf option: the reference for recipe authors."""
    out = []
    inst = cls() if cls is not TrainConfig else None
    for f in fields(cls):
        tp = _hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.extend(config_help(tp, key + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else getattr(inst, f.name, None)  # type: ignore[misc]
            )
            out.append((key, f.metadata.get("help", ""), default))
    return out
