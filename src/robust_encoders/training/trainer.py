"""The AdvUnlearn trainer: adversarial unlearning of a concept in a CLIP text encoder.

One iteration (after the attack warm-up):

1. draw ``x_t`` samples of the frozen model for the concept prompt, with their eps0 targets
   (from a :class:`~robust_encoders.training.sampling.TrajectoryPool`: one DDIM trajectory
   serves many iterations, and its CFG passes *are* the targets);
2. attack: find soft (or real) adversarial tokens that make the *current* encoder regenerate
   the concept, i.e. minimise ``MSE(eps(x_t, E(c_adv)), eps0(x_t, E0(c)))``, reusing the
   same ``x_t`` and the cached ``eps0(x_t, E0(c))``;
3. update the encoder on ``MSE(eps(x_t, E(c_adv)), eps0(x_t,'') - eta (eps0(x_t,c) - eps0(x_t,'')))``
   plus ``gamma`` times the retain loss (UNet space: frozen-model trajectories of retain
   prompts and their cached eps0; encoder space: ``MSE(E(c_r), E0(c_r))``).

Only the text encoder learns. One frozen UNet serves the original and the trained branches
(they differ only in the text conditioning); the frozen original encoder's outputs for the
fixed prompt sets are computed once. Processes launched with accelerate average gradients,
so replicas stay identical; checkpoints are atomic and a resumed run ends bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.diffusion import Conditioning, latent_shape, predict_eps
from ..core.text import TextEncoderPair, encode_from_token_embeds, encode_ids, sdxl_time_ids, tokenize
from ..fileio import atomic_write_text as _atomic_write
from . import checkpoint as ckpt
from .config import MINIATURE, ConfigError, TrainConfig, apply_overrides, load_recipe
from .prompts import (
    default_retain_prompts,
    miniature_forget_prompts,
    miniature_retain_prompts,
    read_prompt_file,
)
from .sampling import TrajectoryPool, derive_seed, derived_generator
from .trainable import copy_sharing_frozen, make_trainable

__all__ = [
    "BaseModelUnavailableError",
    "RunDirError",
    "Trainer",
    "train",
    "resolve_config",
    "run_differences",
    "RESUMABLE_KEYS",
    "RUN_ARTIFACTS",
]

#: Prompts the frozen encoder encodes per pass when it fills its output cache.
ENCODE_CHUNK = 32
#: Config keys a resumed run may change (everything else must match the stored run).
RESUMABLE_KEYS = ("iterations", "checkpoint.every", "checkpoint.keep", "log.every", "log.progress", "model.device")
#: What a run folder holds; ``--overwrite`` removes exactly these.
RUN_ARTIFACTS = ("config.yaml", "robust_encoder.json", "text_encoder", "text_encoder_2", "log.jsonl", "checkpoints")


def _chain_prefix(chain: int) -> str:
    """Checkpoint key prefix of an attack chain's warm-start state (chain 0 keeps the pre-chains ``attack.``)."""
    return "attack." if chain == 0 else f"attack{chain}."


class BaseModelUnavailableError(OSError):
    """The base pipeline cannot be loaded offline."""


class RunDirError(FileExistsError):
    """The output folder holds something that this run must not overwrite."""


# ----------------------------------------------------------------------------------------------------------------
# config resolution
# ----------------------------------------------------------------------------------------------------------------
def resolve_config(config_or_path: TrainConfig | Mapping[str, Any] | str | os.PathLike, overrides: Iterable[str] = ()):
    """A :class:`TrainConfig` from a config, a mapping, a recipe path, or a concept name (``"star"``)."""
    overrides = list(overrides)
    if isinstance(config_or_path, TrainConfig):
        return apply_overrides(config_or_path, overrides) if overrides else config_or_path
    if isinstance(config_or_path, Mapping):
        return apply_overrides(dict(config_or_path), overrides)
    p = Path(config_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return load_recipe(p, overrides)
    from .recipes import resolve_concept

    path, extra = resolve_concept(str(config_or_path))
    return load_recipe(path, extra + overrides)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _diff(a: TrainConfig, b: TrainConfig, ignore: Iterable[str] = RESUMABLE_KEYS) -> list[str]:
    fa, fb = _flat(a.comparable_dict()), _flat(b.comparable_dict())
    ignore = set(ignore)
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k) and k not in ignore]


def run_differences(run_dir: str | os.PathLike, config: TrainConfig) -> list[str]:
    """How the run stored in ``run_dir`` (its ``config.yaml``) differs from ``config``, as ``"key: stored -> given"``
    lines; empty when ``config`` trains the same run to the same length (``RESUMABLE_KEYS`` but ``iterations`` may
    differ). For scripts that reuse finished runs: a recipe whose defaults changed since is caught, not reused.

    Example:
        >>> import tempfile
        >>> cfg = resolve_config("star")
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = (run / "config.yaml").write_text(cfg.to_yaml())
        >>> run_differences(run, resolve_config("star", ["log.progress=false"]))
        []
        >>> run_differences(run, resolve_config("star", ["attack.mode=continuous"]))[-1]
        'attack.chains: 2 -> 1'
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{run_dir} holds no training run (no config.yaml).")
    return _diff(load_recipe(path), config, ignore=[k for k in RESUMABLE_KEYS if k != "iterations"])


# ----------------------------------------------------------------------------------------------------------------
# base model
# ----------------------------------------------------------------------------------------------------------------
def _base_reference(base_model: str) -> tuple[str, bool]:
    """(path or repo id, is_local)."""
    if base_model == MINIATURE:
        from ..miniature.io import _weights_dir

        return str((_weights_dir(None) / "pipeline").resolve()), True
    p = Path(base_model).expanduser()
    if p.exists():
        if not (p / "unet" / "config.json").is_file() or not (p / "text_encoder" / "config.json").is_file():
            raise BaseModelUnavailableError(
                f"{p} is not a diffusers Stable Diffusion pipeline folder (needs unet/, text_encoder/, tokenizer/, "
                "scheduler/). Point model.base_model at the folder that `save_pretrained` wrote."
            )
        return str(p.resolve()), True
    return base_model, False


def _offline_error(ref: str, revision: str | None, exc: Exception) -> BaseModelUnavailableError:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    rev = f" (revision {revision})" if revision else ""
    return BaseModelUnavailableError(
        f"Base model {ref!r}{rev} is not available offline: it is not a local folder and not in the Hugging Face "
        f"cache ({cache}). Training loads base weights with local_files_only=True and never downloads. Either "
        f"pre-download it on a machine with network: `huggingface-cli download {ref} --include 'unet/*' "
        f"'text_encoder/*' 'tokenizer/*' 'scheduler/*'` (then copy the cache here), or set "
        f"model.base_model=/path/to/local/pipeline. To try the method offline, use a miniature concept: "
        f"`robust-encoders train --concept star`. (Underlying error: {type(exc).__name__}: {str(exc)[:200]})"
    )


@dataclasses.dataclass
class _Base:
    ref: str
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    family: str
    # SDXL only: the second encoder and tokenizer, whether the unconditional branch is zeros
    # (``force_zeros_for_empty_prompt``), and the image size (H, W) its time ids describe
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    force_zeros: bool = False
    image_size: tuple[int, int] | None = None
    # a given pipeline's own encoders (text_encoder, text_encoder_2): never trained, so they can be the frozen original
    originals: tuple[Any, Any] | None = None


def _is_at(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Every parameter of ``module`` is of ``dtype`` on ``device`` (so sharing it needs no conversion)."""
    dev = torch.device(device)
    return all(p.dtype == dtype and p.device.type == dev.type and (p.device.index or 0) == (dev.index or 0)
               for p in module.parameters())


def _image_size(unet, vae_scale_factor: int) -> tuple[int, int]:
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(h) * vae_scale_factor, int(w) * vae_scale_factor


def _check_widths(unet, te, te2, ref: str) -> None:
    """The encoders' hidden sizes must add up to the UNet's cross_attention_dim (SDXL: both, concatenated)."""
    widths = [te.config.hidden_size] + ([te2.config.hidden_size] if te2 is not None else [])
    if sum(widths) != unet.config.cross_attention_dim:
        what = " + ".join(str(w) for w in widths)
        raise ValueError(
            f"Text encoder hidden size {what} does not match the UNet's cross_attention_dim "
            f"{unet.config.cross_attention_dim} in {ref}: the folder mixes parts of different Stable Diffusion "
            "families. Point model.base_model at one complete pipeline folder."
        )


def _load_base(cfg: TrainConfig, device: torch.device, frozen_dtype: torch.dtype) -> _Base:
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    ref, local = _base_reference(cfg.model.base_model)
    kw: dict[str, Any] = {"local_files_only": True}
    if cfg.model.revision and not local:
        kw["revision"] = cfg.model.revision
    try:
        unet = UNet2DConditionModel.from_pretrained(ref, subfolder="unet", torch_dtype=frozen_dtype, **kw)
        te = CLIPTextModel.from_pretrained(ref, subfolder="text_encoder", dtype=torch.float32, **kw)
        tok = CLIPTokenizer.from_pretrained(ref, subfolder="tokenizer", **kw)
        sched = DDIMScheduler.from_config(DDIMScheduler.load_config(ref, subfolder="scheduler", **kw))
        xl = {}
        if getattr(unet.config, "addition_embed_type", None) == "text_time":  # SDXL: two encoders, time ids
            from transformers import CLIPTextModelWithProjection

            xl["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
                ref, subfolder="text_encoder_2", dtype=torch.float32, **kw)
            xl["tokenizer_2"] = CLIPTokenizer.from_pretrained(ref, subfolder="tokenizer_2", **kw)
            from diffusers import AutoencoderKL, DiffusionPipeline

            index = DiffusionPipeline.load_config(ref, **kw)
            xl["force_zeros"] = bool(index.get("force_zeros_for_empty_prompt", True))
            try:
                blocks = AutoencoderKL.load_config(ref, subfolder="vae", **kw).get("block_out_channels", [0] * 4)
            except (OSError, ValueError):  # no VAE in the folder: the SD / SDXL factor
                blocks = [0] * 4
            xl["image_size"] = _image_size(unet, 2 ** (len(blocks) - 1))
    except (OSError, ValueError) as exc:
        if local:
            raise BaseModelUnavailableError(f"Could not load the base pipeline from {ref}: {exc}") from exc
        raise _offline_error(ref, cfg.model.revision, exc) from exc
    _check_widths(unet, te, xl.get("text_encoder_2"), ref)
    if cfg.model.base_model == MINIATURE:
        family = "miniature"
    else:
        from ..registry import family_of_base_model

        family = _family_of_shapes(unet, xl.get("text_encoder_2")) or family_of_base_model(cfg.model.base_model) or "sd1"
    unet.requires_grad_(False).eval().to(device)
    return _Base(ref, unet, te, tok, sched, family, **xl)


def _family_of_shapes(unet, te2) -> str | None:
    """``sdxl`` for two encoders, ``sd1`` / ``sd2`` for the real encoder widths, else None (the id decides)."""
    if te2 is not None:
        return "sdxl"
    return {768: "sd1", 1024: "sd2"}.get(int(unet.config.cross_attention_dim))


# ----------------------------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------------------------
def _mse_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1)


@dataclasses.dataclass
class _Part:
    """One term of the update loss: samples, how to encode their text with the trained encoder, targets."""

    name: str
    latents: torch.Tensor
    timesteps: torch.Tensor
    hidden: Any  # Callable[[list[int]], Tensor]: trained-encoder conditioning of samples idx
    target: torch.Tensor
    coef: float = 1.0  # weight of each sample's MSE in the total loss
    probe: torch.Tensor | None = None  # a second target only measured, not trained on (the attack's teacher)

    def __len__(self) -> int:
        return int(self.latents.shape[0])


class Trainer:
    """Runs one AdvUnlearn training job into ``output_dir`` (see the module docstring).

    Args:
        config: the resolved recipe.
        output_dir: the run folder (created).
        resume: continue from the newest checkpoint in ``output_dir`` (a fresh start if none).
        overwrite: remove a previous run's artifacts from ``output_dir`` first.
        accelerator: an ``accelerate.Accelerator`` (one is created when omitted).
        pipeline: an already loaded Stable Diffusion pipeline (or any object with ``unet``,
            ``text_encoder``, ``tokenizer``, ``scheduler``) to use instead of loading
            ``model.base_model``; its UNet is frozen in place, its text encoder is copied (only the
            tensors the run trains: the rest stays shared, ``engine.share_frozen_weights``) and serves
            as the frozen original. Its weights are never changed; the shared tensors' ``requires_grad``
            is switched off.
    """

    def __init__(
        self,
        config: TrainConfig,
        output_dir: str | os.PathLike,
        *,
        resume: bool = False,
        overwrite: bool = False,
        accelerator=None,
        pipeline=None,
    ) -> None:
        if not config.concept.name:
            raise ConfigError("concept.name is empty: say which concept to erase (e.g. --concept star).")
        if resume and overwrite:
            raise ValueError("Pass either resume or overwrite, not both.")
        from accelerate import Accelerator

        self.cfg = config
        self.run_dir = Path(output_dir)
        self.resume, self.overwrite = resume, overwrite
        if accelerator is None:
            # accelerate only forms a multi-process CPU group when asked for the CPU explicitly
            on_cpu = (config.model.device or "").startswith("cpu") or not torch.cuda.is_available()
            accelerator = Accelerator(cpu=on_cpu)
        self.acc = accelerator
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main = self.acc.is_main_process
        self.device = torch.device(config.model.device) if config.model.device else self.acc.device
        self.log_history: list[dict[str, Any]] = []
        self._pipeline = pipeline

    # -- run folder ---------------------------------------------------------------------------------------------------
    def _inspect_run_dir(self) -> str:
        """Decide (read-only, identical on every process): 'fresh', 'resume' or 'overwrite'."""
        d = self.run_dir
        if d.is_file():
            raise RunDirError(f"Output path {d} is a file; choose a folder.")
        if not d.exists() or not any(d.iterdir()):
            return "fresh"
        entries = {p.name for p in d.iterdir()}
        foreign = sorted(entries - set(RUN_ARTIFACTS))
        stored = None
        if (d / "config.yaml").is_file():
            try:
                stored = load_recipe(d / "config.yaml")
            except ConfigError as exc:
                raise RunDirError(f"{d}/config.yaml is not a valid run config ({exc}); choose another --output-dir.") from exc
        if self.overwrite:
            if foreign:
                raise RunDirError(
                    f"Refusing to overwrite {d}: it holds files that are not from a training run ({', '.join(foreign[:5])}). "
                    "Choose an empty or new --output-dir."
                )
            return "overwrite"
        if stored is None:
            raise RunDirError(
                f"Output folder {d} is not empty and holds no training run ({', '.join(sorted(entries)[:5])}). "
                "Choose an empty or new --output-dir."
            )
        diff = _diff(stored, self.cfg)
        what = f"recipe {stored.recipe!r}, concept {stored.concept.name!r}"
        if self.resume:
            if diff:
                raise RunDirError(
                    f"Cannot resume: {d} holds a different run ({what}); these settings differ: "
                    + "; ".join(diff[:6]) + ". Resume with the same recipe and overrides, use --overwrite to start "
                    "over, or choose another --output-dir."
                )
            return "resume"
        cp = ckpt.latest_checkpoint(d)
        done = (d / "robust_encoder.json").is_file()
        state = "finished" if done else (f"stopped at step {cp.name.split('_')[-1].lstrip('0') or 0}" if cp else "started")
        kind = "the same run" if not diff else f"a different run ({what}; differs in: {'; '.join(diff[:4])})"
        raise RunDirError(
            f"Output folder {d} already holds {kind}, {state}. Use --resume to continue it, --overwrite to start "
            "again from scratch, or choose another --output-dir."
        )

    def _prepare_run_dir(self) -> str:
        decision = self._inspect_run_dir()
        self.acc.wait_for_everyone()
        if self.is_main:
            if decision == "overwrite":
                for name in RUN_ARTIFACTS:
                    p = self.run_dir / name
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            header = (
                f"# Resolved training config of this run (recipe {self.cfg.recipe}).\n"
                f"# Re-run: robust-encoders train --recipe {self.run_dir / 'config.yaml'} --output-dir {self.run_dir} --resume\n"
            )
            _atomic_write(self.run_dir / "config.yaml", self.cfg.to_yaml(header))
        self.acc.wait_for_everyone()
        return decision

    # -- setup --------------------------------------------------------------------------------------------------------
    def _precision(self) -> tuple[torch.dtype, torch.dtype | None]:
        """(frozen-parts dtype, autocast dtype or None)."""
        cuda = self.device.type == "cuda"
        mp = self.cfg.model.mixed_precision
        if mp == "auto":
            mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
        auto_dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mp]
        if auto_dtype is not None and not cuda:
            auto_dtype = torch.bfloat16 if mp == "bf16" else None  # fp16 autocast is a GPU feature
        dt = self.cfg.model.dtype
        if dt == "auto":
            frozen = auto_dtype if (auto_dtype is not None and cuda) else torch.float32
        else:
            frozen = getattr(torch, dt)
        return frozen, auto_dtype

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _setup(self) -> None:
        cfg = self.cfg
        self.frozen_dtype, self.autocast_dtype = self._precision()
        base = _load_base(cfg, self.device, self.frozen_dtype) if self._pipeline is None else self._given_base()
        # what training needs of a given pipeline is in `base` now; dropping the pipeline itself lets the parts it
        # never uses (the VAE, a safety checker) go once the caller lets go of them too, as when loading by name
        self._pipeline = None
        self.base = base
        self.tokenizer, self.scheduler, self.family = base.tokenizer, base.scheduler, base.family
        self.unet = base.unet
        self.unet_orig = self.unet if cfg.engine.share_unet else copy.deepcopy(self.unet)
        if cfg.engine.gradient_checkpointing:
            # only the branch that back-propagates into the encoder; frozen-target passes run under no_grad anyway
            self.unet.enable_gradient_checkpointing()
        te = base.text_encoder
        self.slots = ["text_encoder"]  # the pipeline encoders this run trains (and saves)
        self.time_ids = None
        if base.text_encoder_2 is not None:
            self._setup_pair(base)
        else:
            if cfg.model.encoders == "text_encoder_2":
                raise ConfigError(
                    f"model.encoders=text_encoder_2, but {base.ref} has a single text encoder (only SDXL has a "
                    "text_encoder_2). Use model.encoders=both (or text_encoder)."
                )
            te = te.to(self.device)  # before any copy shares its tensors (moving it later would move theirs too)
            self.te_orig = self._frozen_original([te], base)[0]
            torch.manual_seed(derive_seed(cfg.stream_seed("init"), "init"))  # LoRA initialisation
            self.model, self.trainable_names = make_trainable(te, cfg.trainable)
            self.model.to(self.device)
            self.model.eval()  # until set-up ends: the frozen outputs may come from these very weights
            self.te = self.model.get_base_model() if cfg.trainable.part == "lora" else self.model
        trainable = set(self.trainable_names)
        named = [(n, p) for n, p in self.model.named_parameters() if n in trainable]
        self.param_names, self.params = [n for n, _ in named], [p for _, p in named]  # the optimiser's order

        # prompts
        self.concept_kind = self._concept_kind()
        self.forget_prompts = self._forget_prompts()
        self.retain_prompts = self._retain_prompts()
        # frozen-encoder outputs (cached for the fixed prompt sets)
        self._orig_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._ids_cache: dict[str, torch.Tensor] = {}  # prompt -> token ids on the device (_token_ids)
        self.uncond = self._orig_cond([""])
        if base.force_zeros:  # SDXL's default: the unconditional branch is all zeros, not the encoded ""
            u = self.uncond
            self.uncond = Conditioning(torch.zeros_like(u.encoder_hidden_states), {
                k: torch.zeros_like(v) if k == "text_embeds" else v for k, v in u.added_cond_kwargs.items()})
        shape = latent_shape(self.unet, 1)[1:]
        sc = cfg.sampling
        common = dict(
            unet=self.unet_orig, scheduler=self.scheduler, shape=shape, ddim_steps=cfg.unlearn.ddim_steps,
            guidance=cfg.unlearn.start_guidance, eta=cfg.unlearn.ddim_eta, refresh=sc.refresh,
            refresh_every=sc.refresh_every, rank=self.rank, dtype=self.frozen_dtype,
            prompt_order=sc.prompt_order,
        )
        self.forget_pool = TrajectoryPool(
            "forget", self.forget_prompts, lambda idx: self._orig_cond([self.forget_prompts[i] for i in idx]),
            self.uncond, size=sc.pool, need_uncond=True, seed=cfg.stream_seed("forget_pool"), **common,
        )
        self.retain_pool = None
        if cfg.retain.space in ("unet", "both") and cfg.retain.weight > 0:
            self.retain_pool = TrajectoryPool(
                "retain", self.retain_prompts,
                lambda idx: self._orig_cond([self.retain_prompts[i] for i in idx]),
                self.uncond, size=sc.retain_pool, need_uncond=False, seed=cfg.stream_seed("retain_pool"), **common,
            )
        # optimiser
        o = cfg.optim
        if o.optimizer == "sgd":
            self.opt = torch.optim.SGD(self.params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
            self.opt = cls(self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        self.ema = None  # moving average of the trained weights, exported instead of the last iterate
        if o.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=o.ema_decay, update_after_step=o.ema_start, foreach=True)
        self.attack_states: list = [None] * cfg.attack.chains  # one warm-start state per adversarial chain
        # the real tokens a discrete or GCG chain may use: a one-time vocabulary round trip (seconds for CLIP's
        # 49,408 tokens) paid at setup, not inside the first attack round
        self._vocab_ids = None
        if any(m in ("discrete", "gcg") for m in cfg.attack.modes) and cfg.attack.enabled:
            from ..attacks.tokens import safe_token_ids

            self._vocab_ids = safe_token_ids(self.tokenizer)
        self.step = 0
        self.elapsed_before = 0.0
        from .options import TrainerOptions

        self.options = TrainerOptions(self)  # anchor / neighbors / token_focus / derived attack / grad surgery
        self._release_original_encoder()
        self.model.train()

    def _given_base(self) -> _Base:
        from diffusers import DDIMScheduler

        p = self._pipeline
        missing = [a for a in ("unet", "text_encoder", "tokenizer", "scheduler") if getattr(p, a, None) is None]
        if missing:
            raise ValueError(f"pipeline lacks {', '.join(missing)}; pass a StableDiffusionPipeline or load model.base_model.")
        unet = p.unet.requires_grad_(False).eval().to(self.device, self.frozen_dtype)
        te = self._trained_copy(p.text_encoder, self._trains("text_encoder"))
        sched = DDIMScheduler.from_config(p.scheduler.config)
        xl = {}
        if getattr(p, "text_encoder_2", None) is not None:  # SDXL
            if getattr(p, "tokenizer_2", None) is None:
                raise ValueError("pipeline has a text_encoder_2 but no tokenizer_2; pass a StableDiffusionXLPipeline.")
            xl = dict(text_encoder_2=self._trained_copy(p.text_encoder_2, self._trains("text_encoder_2")),
                      tokenizer_2=p.tokenizer_2,
                      force_zeros=bool(getattr(getattr(p, "config", None), "force_zeros_for_empty_prompt", True)),
                      image_size=_image_size(unet, int(getattr(p, "vae_scale_factor", 8))))
        ref = _base_reference(self.cfg.model.base_model)[0] if self.cfg.is_miniature else self.cfg.model.base_model
        _check_widths(unet, te, xl.get("text_encoder_2"), ref)
        from ..registry import family_of_base_model

        family = "miniature" if self.cfg.is_miniature else (
            _family_of_shapes(unet, xl.get("text_encoder_2")) or family_of_base_model(ref) or "sd1")
        return _Base(ref, unet, te, p.tokenizer, sched, family, originals=(p.text_encoder, p.text_encoder_2 if xl else None),
                     **xl)

    def _setup_pair(self, base: _Base) -> None:
        """SDXL: train ``model.encoders`` of (text_encoder, text_encoder_2); the trained model is their pair."""
        cfg = self.cfg
        which = cfg.model.encoders
        self.slots = ["text_encoder", "text_encoder_2"] if which == "both" else [which]
        pad2 = getattr(base.tokenizer_2, "pad_token_id", None)
        eos = int(getattr(base.tokenizer, "eos_token_id", None) or 49407)
        pair = (base.text_encoder, base.text_encoder_2)
        self.te_orig = TextEncoderPair(*self._frozen_original(pair, base), pad_token_id_2=pad2, eos_token_id=eos)
        torch.manual_seed(derive_seed(cfg.stream_seed("init"), "init"))  # LoRA initialisation
        members = {}
        for slot, enc in (("text_encoder", base.text_encoder), ("text_encoder_2", base.text_encoder_2)):
            if slot in self.slots:
                members[slot], _ = make_trainable(enc, cfg.trainable)
            else:
                members[slot] = enc.requires_grad_(False)
        self.model = TextEncoderPair(members["text_encoder"], members["text_encoder_2"], pad_token_id_2=pad2,
                                     eos_token_id=eos).to(self.device)
        self.model.eval()  # train mode once set-up has cached the frozen outputs (see _setup)
        self.trainable_names = [n for n, q in self.model.named_parameters() if q.requires_grad]
        self.te = self.model
        h, w = base.image_size or _image_size(self.unet, 8)
        self.time_ids = sdxl_time_ids(h, w, device=self.device, dtype=self.frozen_dtype)

    def _concept_kind(self) -> str:
        c = self.cfg.concept
        if self.cfg.is_miniature:
            from ..miniature import get_concept

            kind = get_concept(c.name).kind
            if c.kind not in ("auto", kind):
                raise ConfigError(f"concept.kind={c.kind!r} but miniature concept {c.name!r} is a {kind}.")
            return kind
        if c.kind == "auto":
            raise ConfigError(
                f"concept.kind is 'auto' for the real concept {c.name!r}; set it to nudity, style or object in the recipe."
            )
        return c.kind

    def _concept_text(self) -> str:
        return self.cfg.concept.text or self.cfg.concept.name.replace("_", " ")

    def _forget_prompts(self) -> list[str]:
        c = self.cfg.concept
        if c.prompts:
            return list(c.prompts)
        if self.cfg.is_miniature:
            return miniature_forget_prompts(c.name)
        return [self._concept_text()]

    def _retain_prompts(self) -> list[str]:
        r = self.cfg.retain
        text = self._concept_text()
        if r.prompts != "auto":
            prompts = read_prompt_file(r.prompts)
        elif self.cfg.is_miniature:
            prompts = miniature_retain_prompts(self.cfg.concept.name, n=r.num_prompts, seed=self.cfg.stream_seed("retain_prompts"))
        else:
            prompts = default_retain_prompts(exclude=[text, self.cfg.concept.name])
        if r.include_empty:
            prompts = [""] + [p for p in prompts if p]
        if not prompts:
            raise ConfigError("The retain prompt set is empty.")
        return prompts

    # -- encoders ---------------------------------------------------------------------------------------------------
    def _trains(self, slot: str) -> bool:
        return self.cfg.model.encoders in (slot, "both")

    def _trained_copy(self, encoder, trained: bool):
        """The trainer's own fp32 copy of a given pipeline's encoder, on the run's device; the pipeline's weights are
        never changed. With engine.share_frozen_weights, when the pipeline's encoder already is fp32 on that device,
        the copy shares every tensor that will not be trained (all of them for an encoder this run does not train)."""
        if not trained and self.cfg.engine.share_frozen_weights and _is_at(encoder, self.device, torch.float32):
            return encoder
        return self._copy_of(encoder, torch.float32)

    def _copy_of(self, encoder, dtype: torch.dtype):
        """A copy of ``encoder`` in ``dtype`` on the run's device. With engine.share_frozen_weights, when ``encoder``
        already is there in that dtype, the copy shares every tensor the run does not train (no conversion would
        touch the shared tensors); otherwise it is a full copy."""
        if self.cfg.engine.share_frozen_weights and _is_at(encoder, self.device, dtype):
            return copy_sharing_frozen(encoder, self.cfg.trainable)
        return copy.deepcopy(encoder).to(self.device, dtype)

    def _frozen_original(self, encoders: list, base: _Base) -> list:
        """The frozen encoders the targets come from, cheapest first:
        1. a given pipeline's own encoders, when they already are in the frozen dtype on the run's device: the run
           trains a copy, so these stay the original; nothing is copied;
        2. the trained encoders themselves, whose outputs set-up caches for every prompt of the run before the first
           update (engine.release_original_encoder; until then the trained encoder *is* the original, LoRA starting
           as the identity; read in its fp32, cast to the frozen dtype); nothing is copied and nothing is kept;
        3. a frozen copy, sharing with the trained encoder what it does not train when the frozen dtype is fp32."""
        given = [o for o in (base.originals or ()) if o is not None]
        if (len(given) == len(encoders) and all(_is_at(g, self.device, self.frozen_dtype) and not g.training for g in given)):
            self.frozen_source = "pipeline"
            return given
        if self._releases_original_encoder():
            self.frozen_source = "released"
            return list(encoders)
        self.frozen_source = "copy"
        return [self._frozen_copy(e) for e in encoders]

    def _releases_original_encoder(self) -> bool:
        """Whether the frozen outputs are all cached during set-up and the encoder is then dropped
        (engine.release_original_encoder; at SD-1.5 size 0.5 GB less in fp32)."""
        from .options import TrainerOptions

        e = self.cfg.engine
        return e.release_original_encoder and e.cache_original and not TrainerOptions.needs_original_encoder_for(
            self.cfg)

    def _frozen_copy(self, encoder):
        return self._copy_of(encoder, self.frozen_dtype).requires_grad_(False).eval()

    def _release_original_encoder(self) -> None:
        """engine.release_original_encoder: cache the frozen encoder's outputs for every prompt the run can use
        ("", the forget and the retain prompts), then drop the reference to the original weights."""
        if self.frozen_source != "released":
            return
        self._orig_outputs(["", *self.forget_prompts, *self.retain_prompts])
        self.te_orig = None
        gc.collect()

    @torch.no_grad()
    def _orig_outputs(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frozen encoder's token conditioning (and SDXL's pooled text_embeds, else None) for ``prompts``
        (cached when engine.cache_original)."""
        cache = self.cfg.engine.cache_original
        missing = [p for p in dict.fromkeys(prompts) if not cache or p not in self._orig_cache]
        fresh = {}
        if missing:
            if self.te_orig is None:
                raise RuntimeError(
                    f"The frozen encoder was released after caching the run's prompts (engine.release_original_encoder"
                    f"=true), but {missing[0]!r} was not among them. Code that encodes new text with the frozen encoder "
                    "must set engine.release_original_encoder=false (or declare it in TrainerOptions."
                    "needs_original_encoder_for)."
                )
            # in chunks: one pass over the whole run's prompts (hundreds) would hold every layer's activations
            # for all of them at once, the run's peak memory on the miniature model
            for start in range(0, len(missing), ENCODE_CHUNK):
                chunk = missing[start:start + ENCODE_CHUNK]
                enc = encode_ids(self.te_orig, self._token_ids(chunk))
                out = enc.last_hidden_state.to(self.frozen_dtype)
                pooled = enc.text_embeds.to(self.frozen_dtype) if self.time_ids is not None else [None] * len(chunk)
                fresh.update((p, (h, q)) for p, h, q in zip(chunk, out, pooled, strict=True))
            if cache:
                self._orig_cache.update(fresh)
        src = self._orig_cache if cache else fresh
        hidden = torch.stack([src[p][0] for p in prompts])
        return hidden, (torch.stack([src[p][1] for p in prompts]) if self.time_ids is not None else None)

    def _orig_hidden(self, prompts: list[str]) -> torch.Tensor:
        """Frozen encoder's token conditioning (last hidden state; SDXL: both encoders' penultimate states)."""
        return self._orig_outputs(prompts)[0]

    def _orig_cond(self, prompts: list[str]) -> Conditioning:
        return self._conditioning(*self._orig_outputs(prompts))

    def _conditioning(self, hidden: torch.Tensor, text_embeds: torch.Tensor | None) -> Conditioning:
        """What the UNet reads: the token states, plus SDXL's pooled text_embeds and time ids."""
        if self.time_ids is None:
            return Conditioning(hidden)
        return Conditioning(hidden, {"text_embeds": text_embeds, "time_ids": self.time_ids.expand(hidden.shape[0], -1)})

    def _cond_of(self, enc) -> Conditioning:
        return self._conditioning(enc.last_hidden_state, enc.text_embeds)

    def _as_cond(self, c) -> Conditioning:
        if isinstance(c, Conditioning):
            return c
        if self.time_ids is not None:
            raise ValueError("SDXL needs the pooled text_embeds with the token states: build this loss term's "
                             "conditioning with Trainer._encode_cond / _cond_of, not a bare hidden-state tensor.")
        return Conditioning(c)

    def _token_ids(self, prompts: list[str]) -> torch.Tensor:
        """Token ids of ``prompts`` on the training device, each prompt tokenised once per run (the run's prompt
        lists are fixed, and every iteration encodes some of them several times)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._ids_cache]
        if missing:
            self._ids_cache.update(zip(missing, tokenize(self.tokenizer, missing, device=self.device), strict=True))
        return torch.stack([self._ids_cache[p] for p in prompts])

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        return encode_ids(self.te, self._token_ids(prompts)).last_hidden_state

    def _encode_cond(self, prompts: list[str]) -> Conditioning:
        """The trained encoder's conditioning of ``prompts`` (gradients reach its weights)."""
        return self._cond_of(encode_ids(self.te, self._token_ids(prompts)))

    # -- one iteration -------------------------------------------------------------------------------------------------
    def _attack(self, step: int, prompts: list[str], xb) -> tuple[Any, bool]:
        """Run (or reuse) the adversarial prompt for this iteration: (AttackResult, whether it was re-optimised)."""
        from ..attacks import PromptAttack

        a = self.cfg.attack
        rnd, offset = divmod(step - a.warmup, a.every)  # attack round; chains take rounds in turn
        chain = rnd % a.chains
        new_round = offset == 0
        fresh = new_round or self.attack_states[chain] is None
        mode = a.modes[chain]
        if mode == "derived":  # RECE-style: derived concept-token embeddings, no UNet pass (training/options.py)
            res = self.options.derived_attack(step, prompts, fresh, self.attack_states[chain])
            self.attack_states[chain] = res.state
            return res, fresh
        acfg = a.to_prompt_attack_config(derive_seed(self.cfg.stream_seed("attack"), "attack", self.rank, step), chain)
        # chunked like the update; the final prompt's attack loss comes from the update's own pass (train_step)
        acfg = dataclasses.replace(acfg, micro_batch=self.cfg.engine.micro_batch, score_final=False)
        if not fresh:
            acfg = dataclasses.replace(acfg, steps=0, init="warm")
        elif a.restart_every and new_round and rnd % a.restart_every == a.restart_every - 1:
            acfg = dataclasses.replace(acfg, steps=a.restart_steps, init="token")
            self.attack_states[chain] = None
        attack = PromptAttack(self.te, self.tokenizer, acfg, vocab_ids=self._vocab_ids)
        fixed = self._on_device(xb)
        xt_gen = derived_generator(self.cfg.stream_seed("step"), "attack-xt", self.rank, step) if a.resample_xt else None

        drawn = [fixed]

        def loss_fn(enc, rows: slice = slice(None)):
            # the iteration's (x_t, t), or a new timestep of the same trajectories at every step (drawn once per
            # step: with engine.micro_batch the step's later chunks reuse what its first chunk drew)
            if xt_gen is not None and rows.start in (None, 0):
                drawn[0] = self._on_device(self.forget_pool.resample(xb, xt_gen))
            lat, ts, target = (t[rows] for t in drawn[0])
            return _mse_per_sample(predict_eps(self.unet, lat, ts, self._cond_of(enc)), target)

        was_training = self.model.training
        self.model.eval()
        try:
            with self._autocast():
                res = attack.run(prompts, loss_fn, state=self.attack_states[chain])
        finally:
            self.model.train(was_training)
        self.attack_states[chain] = res.state
        return res, fresh

    def _on_device(self, b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """An :class:`XtBatch`'s x_t (frozen dtype), timesteps and eps0(x_t, c) on the training device."""
        return b.latents.to(self.device, self.frozen_dtype), b.timesteps.to(self.device), b.eps_cond.to(self.device)

    def _adv_encoded(self, res, idx: list[int]):
        """Re-encode adversarial prompts ``idx`` with the current encoder (gradients reach its weights)."""
        if res.adv_token_ids is not None:  # discrete: real tokens (== tokenising res.texts)
            return encode_ids(self.te, res.real_input_ids[idx].to(self.device))
        ids = res.input_ids[idx].to(self.device)
        current = self.te.get_input_embeddings()(ids)
        mask = res.adv_mask[idx].to(self.device).unsqueeze(-1)
        emb = torch.where(mask, res.token_embeds[idx].to(self.device, current.dtype), current)
        return encode_from_token_embeds(self.te, emb, ids)

    def _adv_hidden(self, res, idx: list[int]) -> torch.Tensor:
        """Token states of the adversarial prompts ``idx`` under the current encoder (see :meth:`_adv_encoded`)."""
        return self._adv_encoded(res, idx).last_hidden_state

    def _adv_cond(self, res, idx: list[int]) -> Conditioning:
        """UNet conditioning of the adversarial prompts ``idx`` (SDXL: with pooled text_embeds and time ids)."""
        return self._cond_of(self._adv_encoded(res, idx))

    def _lr(self, step: int) -> float:
        o = self.cfg.optim
        if o.lr_warmup and step < o.lr_warmup:
            return o.lr * (step + 1) / o.lr_warmup
        if o.schedule == "cosine":
            span = max(1, self.cfg.iterations - o.lr_warmup)
            return o.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.lr_warmup) / span)))
        return o.lr

    def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        gen = derived_generator(cfg.stream_seed("step"), "step", self.rank, step)
        t0 = time.perf_counter()
        xb = self.forget_pool.sample(cfg.unlearn.batch_size, step, gen)
        t_sample = time.perf_counter() - t0
        prompts = [self.forget_prompts[int(i)] for i in xb.prompt_index]
        eta = cfg.unlearn.negative_guidance
        target = (xb.eps_uncond - eta * (xb.eps_cond - xb.eps_uncond)).to(self.device)
        record: dict[str, Any] = {"step": step + 1}
        target, anchor_record = self.options.anchor_target(step, xb, prompts, target)  # AdvAnchor (if on)
        record.update(anchor_record)

        attacking = cfg.attack.enabled and step >= cfg.attack.warmup
        res = None
        t0 = time.perf_counter()
        if attacking:
            res, fresh = self._attack(step, prompts, xb)
            if fresh and res.losses:
                record["attack_loss_start"] = res.losses[0]
            if res.sample_losses is not None:
                record["attack_loss"] = float(res.sample_losses.float().mean())
            if res.texts is not None:
                record["adv_prompt"] = res.texts[0]

        t_attack = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.opt.param_groups[0]["lr"] = lr = self._lr(step)
        self.opt.zero_grad(set_to_none=True)
        lat = xb.latents.to(self.device, self.frozen_dtype)
        ts = xb.timesteps.to(self.device)
        parts: list[_Part] = []
        if res is not None:
            parts.append(_Part("forget_adv", lat, ts, lambda idx: self._adv_cond(res, idx), target,
                               probe=None if res.sample_losses is not None else xb.eps_cond.to(self.device)))
        if res is None or cfg.unlearn.include_clean:
            parts.append(_Part("forget_clean", lat, ts, lambda idx: self._encode_cond([prompts[i] for i in idx]),
                               target))
        n_forget = len(parts)
        for p in parts:
            p.coef = 1.0 / (n_forget * len(p))
        nb_parts, opt_terms = self.options.neighbor_parts(step, prompts, lat, ts, target)  # RealEra (if on)
        parts += nb_parts
        opt_terms = self.options.eot_terms(prompts, res) + opt_terms  # TRCE (if on): (name, group, weight, loss)
        r = cfg.retain
        retain_enc = None
        if r.weight > 0 and r.space in ("unet", "both"):
            t1 = time.perf_counter()
            rb = self.retain_pool.sample(r.batch_size, step, gen)
            t_retain_sample = time.perf_counter() - t1
            t_sample += t_retain_sample
            t0 += t_retain_sample
            rp = [self.retain_prompts[int(i)] for i in rb.prompt_index]
            r_lat, r_ts, r_target = self._on_device(rb)
            parts.append(_Part(
                "retain", r_lat, r_ts, lambda idx: self._encode_cond([rp[i] for i in idx]), r_target, r.weight / len(rp),
            ))
        # UNet passes of the trained branch, in chunks: one batched call for everything (default), one call per
        # part (reference), or micro-batches of `engine.micro_batch` samples, each back-propagated at once so only
        # that many samples' activations are alive (peak memory of a batch-1 pass on SD-sized models)
        e = cfg.engine
        samples = [(k, i) for k, p in enumerate(parts) for i in range(len(p))]
        if e.micro_batch > 0:
            chunks = [samples[j:j + e.micro_batch] for j in range(0, len(samples), e.micro_batch)]
        elif e.fused_unet_batch:
            chunks = [samples]
        else:
            chunks = [[(k, i) for (k, i) in samples if k == kk] for kk in range(len(parts))]
        surgery = self.options.surgery  # DoCo: forget chunks first, none mixing forget and retain samples
        if surgery:
            chunks = [[s for s in c if parts[s[0]].name.startswith("retain") == g] for g in (False, True) for c in chunks]
        sums = [0.0] * len(parts)
        probes = [0.0] * len(parts)
        pending = [w * v for _, g, w, v in opt_terms if g == "forget"]
        forget_grads = None

        def split_forget_grads():
            if pending:
                self._backward(sum(pending))
                pending.clear()
            return self.options.take_grads(self.params)

        for chunk in chunks:
            if not chunk:
                continue
            if surgery and forget_grads is None and parts[chunk[0][0]].name.startswith("retain"):
                forget_grads = split_forget_grads()
            with self._autocast():
                by_part: dict[int, list[int]] = {}
                for k, i in chunk:
                    by_part.setdefault(k, []).append(i)
                keys = list(by_part)
                eps = predict_eps(
                    self.unet,
                    torch.cat([parts[k].latents[by_part[k]] for k in keys]),
                    torch.cat([parts[k].timesteps[by_part[k]] for k in keys]),
                    Conditioning.cat([self._as_cond(parts[k].hidden(by_part[k])) for k in keys]),
                )
                tgt = torch.cat([parts[k].target[by_part[k]] for k in keys])
                coef = torch.tensor([parts[k].coef for k in keys for _ in by_part[k]], device=eps.device)
                per = _mse_per_sample(eps, tgt)
                chunk_loss = (coef * per).sum()
            off = 0
            for k in keys:
                n = len(by_part[k])
                sums[k] += float(per[off:off + n].detach().sum())
                if parts[k].probe is not None:
                    probes[k] += float(_mse_per_sample(eps[off:off + n].detach(), parts[k].probe[by_part[k]]).sum())
                off += n
            if e.micro_batch > 0:
                self._backward(chunk_loss)
            else:
                pending.append(chunk_loss)
        if surgery and forget_grads is None:
            forget_grads = split_forget_grads()
        pending += [w * v for _, g, w, v in opt_terms if g == "retain"]
        enc_weight = r.weight if r.space == "encoder" else (r.encoder_weight if r.space == "both" else 0.0)
        if enc_weight > 0:
            idx = torch.randint(len(self.retain_prompts), (r.batch_size,), generator=gen).tolist()
            ep = [self.retain_prompts[i] for i in idx]
            with self._autocast():
                retain_enc = F.mse_loss(self._encode(ep).float(), self._orig_hidden(ep).float())
            pending.append(enc_weight * retain_enc)
        if pending:
            self._backward(sum(pending))
        if surgery:
            record["surgery_conflicts"] = self.options.combine(self.params, forget_grads)
        part_loss = {p.name: sums[k] / len(p) for k, p in enumerate(parts)}
        for k, p in enumerate(parts):
            if p.probe is not None:  # the attack loss of its final prompt, MSE(eps(x_t, E(c_adv)), eps0(x_t, c))
                record["attack_loss"] = probes[k] / len(p)
        loss_forget = sum(v for k, v in part_loss.items() if k.startswith("forget")) / n_forget
        loss = loss_forget + (r.weight * part_loss["retain"] if "retain" in part_loss else 0.0)
        if retain_enc is not None:
            part_loss["retain_encoder"] = float(retain_enc.detach())
            loss += enc_weight * part_loss["retain_encoder"]
        if "neighbors" in part_loss:
            loss += cfg.neighbors.weight * part_loss["neighbors"]
            record["loss_neighbors"] = part_loss["neighbors"]
        for name, _, w, v in opt_terms:
            record[f"loss_{name}"] = float(v.detach())
            loss += w * record[f"loss_{name}"]

        self._average_gradients()
        if cfg.optim.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.ema is not None:
            self.ema.step(self.params)
        t_update = time.perf_counter() - t0
        record.update({"loss": loss, "loss_forget": loss_forget, "lr": lr})
        record.update(t_sample=round(t_sample, 4), t_attack=round(t_attack, 4), t_update=round(t_update, 4))
        if "retain" in part_loss:
            record["loss_retain"] = part_loss["retain"]
        if "retain_encoder" in part_loss:
            record["loss_retain_encoder"] = part_loss["retain_encoder"]
        return record

    def _backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _average_gradients(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        off = 0
        for p, g in zip(self.params, grads, strict=True):
            n = g.numel()
            p.grad = flat[off:off + n].view_as(p).clone()
            off += n

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def _save_checkpoint(self, step: int, elapsed: float) -> None:
        ckpt.write_rank_rng(self.run_dir, step, self.rank)
        self.acc.wait_for_everyone()
        if self.is_main:
            from ..attacks import AttackState  # noqa: F401  (documents the serialised type)

            params = dict(self.model.named_parameters())
            tensors = {f"model.{n}": params[n].detach().to("cpu").contiguous().clone() for n in self.trainable_names}
            opt_t, opt_meta = ckpt.flatten_optimizer_state(self.opt.state_dict())
            tensors.update(opt_t)
            atk_meta = []
            for c, state in enumerate(self.attack_states):
                atk_t, m = ckpt.serialize_dataclass(state, _chain_prefix(c))
                tensors.update(atk_t)
                atk_meta.append(m)
            tensors.update(self.options.state_tensors())
            if self.ema is not None:
                tensors.update({f"ema.{n}": s.detach().to("cpu").contiguous().clone()
                                for n, s in zip(self.param_names, self.ema.shadow_params, strict=True)})
            meta = {
                "step": step,
                "iterations": self.cfg.iterations,
                "world_size": self.world,
                "elapsed_s": elapsed,
                "optimizer": opt_meta,
                "attack_state": atk_meta[0],
                "attack_chains": atk_meta[1:],
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "config_fingerprint": self.cfg.fingerprint(RESUMABLE_KEYS),
                "trainable_names": self.trainable_names,
                "ema_step": self.ema.optimization_step if self.ema is not None else None,
            }
            ckpt.write_checkpoint(self.run_dir, step, tensors, meta)
            ckpt.prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep)
        self.acc.wait_for_everyone()

    def _load_checkpoint(self, path: Path) -> None:
        from ..attacks import AttackState

        tensors, meta = ckpt.read_checkpoint(path)
        if meta.get("world_size", 1) != self.world:
            raise RunDirError(
                f"Checkpoint {path} was written by {meta.get('world_size')} process(es); resume it with the same number "
                f"(now {self.world}) so every process gets its own random stream back."
            )
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n in self.trainable_names:
                key = f"model.{n}"
                if key not in tensors:
                    raise RunDirError(f"Checkpoint {path} lacks trainable tensor {n!r}; it belongs to another setup.")
                params[n].copy_(tensors[key].to(params[n].device, params[n].dtype))
        self.opt.load_state_dict(ckpt.unflatten_optimizer_state(tensors, meta["optimizer"]))
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        metas = [meta["attack_state"], *meta.get("attack_chains", [])]
        if len(metas) != len(self.attack_states):
            raise RunDirError(f"Checkpoint {path} holds {len(metas)} attack chain(s) but attack.chains is "
                              f"{len(self.attack_states)}; resume with the run's own setting.")
        self.attack_states = [
            ckpt.deserialize_dataclass(AttackState, tensors, m, _chain_prefix(c), self.device)
            for c, m in enumerate(metas)
        ]
        self.options.load_state_tensors(tensors)
        if self.ema is not None:
            with torch.no_grad():
                for n, shadow in zip(self.param_names, self.ema.shadow_params, strict=True):
                    if f"ema.{n}" not in tensors:
                        raise RunDirError(f"Checkpoint {path} holds no moving average of {n!r}; it was written "
                                          "without optim.ema_decay.")
                    shadow.copy_(tensors[f"ema.{n}"].to(shadow.device, shadow.dtype))
            self.ema.optimization_step = int(meta["ema_step"])
        rng = ckpt.read_rank_rng(path, self.rank)
        if rng is not None:
            ckpt.restore_rng(*rng)
        self.step = int(meta["step"])
        self.elapsed_before = float(meta.get("elapsed_s", 0.0))

    # -- outputs -------------------------------------------------------------------------------------------------------
    def _fingerprint(self) -> torch.Tensor:
        return torch.stack([p.detach().double().sum() for p in self.params] + [p.detach().double().abs().sum() for p in self.params])

    def _check_replicas(self) -> bool:
        if self.world == 1:
            return True
        fp = self._fingerprint().to(self.device)
        allfp = self.acc.gather(fp.unsqueeze(0))
        same = bool(torch.all(allfp == allfp[0:1]))
        if not same:
            raise RuntimeError("Training replicas diverged: the processes hold different encoder weights.")
        return same

    @property
    def _recorded_base(self) -> str:
        """The base as runs and adapters record it: the portable name of the packaged miniature world (the loader
        resolves it), otherwise the pipeline id or folder the run was trained on."""
        return MINIATURE if self.cfg.is_miniature else self.base.ref

    def _save_outputs(self, train_time: float) -> None:
        fmt = "lora" if self.cfg.trainable.part == "lora" else "full"
        for slot in self.slots:  # one folder per trained encoder (SDXL: text_encoder/ and/or text_encoder_2/)
            self._save_encoder(slot, self.model if slot == "text_encoder" and not isinstance(
                self.model, TextEncoderPair) else getattr(self.model, slot), fmt)
        info = {
            "concept": self.cfg.concept.name,
            "concept_kind": self.concept_kind,
            "method": "advunlearn",
            "base_model": self._recorded_base,
            "base_subfolder": self.slots[0] if len(self.slots) == 1 else None,
            "base_revision": self.cfg.model.revision,
            "base_families": [self.family],
            "trainable": self.cfg.trainable.part,
            "trainable_detail": self._trainable_detail(),
            "recipe": self.cfg.recipe,
            "format": fmt,
            "encoders": list(self.slots),
            "train_time_s": round(train_time, 2),
            "iterations": self.cfg.iterations,
            "world_size": self.world,
            "seed": self.cfg.seed,
            "weights": "last" if self.ema is None else f"ema (decay {self.cfg.optim.ema_decay})",
        }
        _atomic_write(self.run_dir / "robust_encoder.json", json.dumps(info, indent=2) + "\n")

    def _save_encoder(self, slot: str, model: torch.nn.Module, fmt: str) -> None:
        out = self.run_dir / slot
        tmp = self.run_dir / f".tmp-{slot}"
        if tmp.exists():
            shutil.rmtree(tmp)
        import warnings

        with warnings.catch_warnings():  # peft looks for a config.json at the pipeline root; the embeddings are frozen
            warnings.filterwarnings("ignore", message="Could not find a config file")
            model.save_pretrained(str(tmp), safe_serialization=True)
        if fmt == "lora":  # point the adapter at the base pipeline (loaders take its text_encoder/)
            acfg_path = tmp / "adapter_config.json"
            acfg = json.loads(acfg_path.read_text(encoding="utf-8"))
            ref = self._recorded_base
            if isinstance(self.model, TextEncoderPair):  # a pipeline id alone would mean its text_encoder/
                ref = str(Path(ref) / slot) if Path(ref).exists() else f"{ref}/{slot}"
            acfg["base_model_name_or_path"] = ref
            acfg["revision"] = self.cfg.model.revision
            acfg_path.write_text(json.dumps(acfg, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)

    def _trainable_detail(self) -> dict[str, Any]:
        t = self.cfg.trainable
        d: dict[str, Any] = {"part": t.part, "train_embeddings": t.train_embeddings,
                             "parameters": int(sum(p.numel() for p in self.params))}
        if t.part == "first_k":
            d["layers"] = t.layers
        if t.part == "lora":
            d.update(rank=t.lora.rank, alpha=t.lora.alpha, targets=list(t.lora.targets))
        return d

    def _log(self, record: dict[str, Any]) -> None:
        self.log_history.append(record)
        if self.is_main:
            with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        f = self.run_dir / "log.jsonl"
        if not self.is_main or not f.is_file():
            return
        keep = []
        for ln in f.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if rec.get("step", 0) <= step and "event" not in rec:
                keep.append(ln)
        _atomic_write(f, "".join(ln + "\n" for ln in keep))

    # -- main loop -----------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train (or continue) and write the run folder; returns its path."""
        from tqdm.auto import tqdm

        decision = self._prepare_run_dir()
        t_setup = time.perf_counter()
        self._setup()
        if decision == "resume":
            last = ckpt.latest_checkpoint(self.run_dir)
            if last is not None:
                self._load_checkpoint(last)
            self._truncate_log(self.step)
        cfg = self.cfg
        if self.step >= cfg.iterations and (self.run_dir / "robust_encoder.json").is_file():
            return self.run_dir
        setup_s = time.perf_counter() - t_setup
        bar = tqdm(
            total=cfg.iterations, initial=self.step, disable=not (cfg.log.progress and self.is_main),
            desc=f"advunlearn {cfg.concept.name}", dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        last_attack = None
        try:
            for step in range(self.step, cfg.iterations):
                t_it = time.perf_counter()
                record = self.train_step(step)
                self.step = step + 1
                if "attack_loss" in record:
                    last_attack = record["attack_loss"]
                dt = time.perf_counter() - t_it
                record["time_s"] = round(dt, 4)
                record["elapsed_s"] = round(self.elapsed_before + time.perf_counter() - t0, 2)
                if self.world > 1:
                    lt = torch.tensor([record["loss"]], device=self.device)
                    record["loss_mean_over_processes"] = float(self.acc.reduce(lt, "mean"))
                if self.step % cfg.log.every == 0 or self.step == cfg.iterations:
                    self._log(record)
                post = {"loss": f"{record['loss']:.4f}"}
                if last_attack is not None:
                    post["atk"] = f"{last_attack:.4f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                if self.step % cfg.checkpoint.every == 0 or self.step == cfg.iterations:
                    self._save_checkpoint(self.step, self.elapsed_before + time.perf_counter() - t0)
        finally:
            bar.close()
        train_time = self.elapsed_before + time.perf_counter() - t0
        self.replicas_identical = self._check_replicas()
        if self.ema is not None:  # the export is the average; the checkpoints keep the live weights for resuming
            self.ema.copy_to(self.params)
        if self.is_main:
            self._save_outputs(train_time)
            self._log({"step": self.step, "event": "done", "train_time_s": round(train_time, 2),
                       "setup_s": round(setup_s, 2), "world_size": self.world,
                       "replicas_identical": self.replicas_identical})
        self.acc.wait_for_everyone()
        return self.run_dir


def train(
    config_or_path: TrainConfig | Mapping[str, Any] | str | os.PathLike,
    overrides: Iterable[str] = (),
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Train a robust text encoder; returns the run folder.

    ``config_or_path``: a :class:`TrainConfig`, a mapping, a recipe YAML path, or a concept name
    (``"star"`` resolves to ``recipes/miniature_star.yaml``). ``overrides``: dotted
    ``KEY=VALUE`` strings. ``output_dir`` defaults to ``runs/<recipe>``.

    Example:
        >>> from robust_encoders.training import train
        >>> run = train("star", ["iterations=2", "attack.warmup=1", "attack.steps=2"],
        ...             output_dir="/tmp/re-doc-run", overwrite=True)   # doctest: +SKIP
        >>> sorted(p.name for p in run.iterdir())                        # doctest: +SKIP
        ['checkpoints', 'config.yaml', 'log.jsonl', 'robust_encoder.json', 'text_encoder']
    """
    cfg = resolve_config(config_or_path, overrides)
    out = Path(output_dir) if output_dir is not None else Path("runs") / cfg.recipe
    return Trainer(cfg, out, resume=resume, overwrite=overwrite).run()
