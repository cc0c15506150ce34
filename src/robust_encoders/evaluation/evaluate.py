"""One-call evaluation of a text encoder: Pre-ASR, ASR per attack, retain accuracy, CLIP score, FID-style distance.

``evaluate_encoder`` generates, for every forget prompt, the original model's image (also the
attacks' target) and the evaluated encoder's image, attacks the prompts the encoder did not
break on its own, and on the retain prompts compares the encoder's images with the original's.

Prompts are processed in fixed chunks of ``batch_size`` (chunk ``i`` goes to process
``i % num_processes`` under ``accelerate launch`` / ``torchrun``), every chunk is seeded by its index, and
per-prompt records are gathered and sorted before any metric is computed, so a run on N
processes gives exactly the numbers of a single-process run.

Several processes on one CPU-only machine: ``accelerate launch --multi_gpu --num_processes 2 -m
robust_encoders evaluate ...`` or ``torchrun --nproc_per_node 2 -m robust_encoders evaluate ...``
(accelerate's ``--cpu`` flag always starts a single process).

Example:
    >>> from robust_encoders.evaluation import EvalConfig, evaluate_encoder
    >>> from robust_encoders.miniature import load_pipeline
    >>> pipe = load_pipeline()
    >>> res = evaluate_encoder(pipe.text_encoder, pipe=pipe, config=EvalConfig(concept="star", n_prompts=2,
    ...     n_retain=2, steps=3, attacks=("synonym",)))          # doctest: +SKIP
    >>> sorted(res.summary)                                     # doctest: +SKIP
    ['asr', 'clip_score', 'concept', 'concept_kind', 'config', 'detector', 'encoder', 'fid', ...]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attacks.base import AttackContext, AttackTarget, ConceptSpec, concept_spec
from ..attacks.pipeline_attacks import ATTACKS, build_attack
from ..attacks.sd import SDModel
from .metrics import ClipScorer, attack_success_rate, frechet_distance, retain_accuracy
from .prompts import PromptItem, miniature_forget_prompts, miniature_retain_prompts

__all__ = ["ALL_ATTACKS", "EvalConfig", "EvalResult", "RESULT_KEYS", "evaluate_encoder"]

ALL_ATTACKS: tuple[str, ...] = ("unlearndiffatk", "soft_prompt", "ringabell", "synonym", "inversion")
RESULT_KEYS: tuple[str, ...] = ("concept", "concept_kind", "encoder", "detector", "n_prompts", "seed", "pre_asr",
                                "asr", "retain_accuracy", "clip_score", "fid", "timing_s", "config")


@dataclass
class EvalConfig:
    """Settings of one evaluation (all of it ends up in the result's ``config``)."""

    concept: str = field(metadata={"help": "Concept to red-team (miniature name, or a real-SD concept)."})
    n_prompts: int = field(default=24, metadata={"help": "Forget prompts (generated sets; CSV sets are cut to this)."})
    n_retain: int = field(default=24, metadata={"help": "Retain prompts (0: skip utility metrics)."})
    seed: int = field(default=0, metadata={"help": "Seed of prompt sets and attacks."})
    steps: int = field(default=25, metadata={"help": "DDIM steps per image."})
    guidance: float = field(default=7.5, metadata={"help": "Guidance scale (CSV rows may override it)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per chunk (fixes batching; part of the result)."})
    attacks: tuple[str, ...] = field(default=ALL_ATTACKS, metadata={"help": "Attacks to run, in order."})
    attack_overrides: dict[str, dict[str, Any]] = field(default_factory=dict,
                                                        metadata={"help": "attack name -> config overrides."})
    heldout_frac: float = field(default=0.5, metadata={"help": "Share of held-out phrasings in miniature sets."})
    grid_prompts: int = field(default=6, metadata={"help": "Forget prompts shown in the PNG grid."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars (main process only)."})

    def __post_init__(self) -> None:
        self.attacks = tuple(a.strip().lower().replace("-", "_") for a in self.attacks)
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"Unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}.")
        bad = sorted(set(self.attack_overrides) - set(ATTACKS))
        if bad:
            raise ValueError(f"attack_overrides names unknown attack(s) {', '.join(bad)}.")
        for name in ("n_prompts", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.n_retain < 0 or self.grid_prompts < 0:
            raise ValueError("EvalConfig.n_retain and grid_prompts must be >= 0.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attacks"] = list(self.attacks)
        d.pop("progress")
        return d


@dataclass
class EvalResult:
    """``summary`` follows the results schema (:data:`RESULT_KEYS`); ``details`` holds per-prompt records;
    ``grid`` the images for the PNG (main process only; empty elsewhere)."""

    summary: dict[str, Any]
    details: dict[str, Any]
    grid: dict[str, Any] = field(default_factory=dict)

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``result.json``, ``details.json``, ``table.md`` and ``grid.png`` into ``out_dir``."""
        from .report import markdown_table, save_grid

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "result.json", "details": out / "details.json", "markdown": out / "table.md"}
        paths["json"].write_text(json.dumps(self.summary, indent=2) + "\n")
        paths["details"].write_text(json.dumps(self.details, indent=2) + "\n")
        paths["markdown"].write_text(markdown_table([self.summary], details=self.details, intervals=True) + "\n")
        if self.grid:
            paths["grid"] = save_grid(self.grid, out / "grid.png")
        return paths


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(s, min(n, s + size))) for s in range(0, n, size)]


def _state():
    """accelerate's process state; CPU-only multi-process launches (torchrun, ``accelerate launch --multi_gpu``
    on a machine without GPUs) are set up as MULTI_CPU (gloo) instead of silently running single-process."""
    try:
        from accelerate import PartialState

        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        cpu = cpu or (world > 1 and not torch.cuda.is_available())
        return PartialState(cpu=cpu)
    except Exception:  # accelerate missing or not initialisable: single process
        return None


def _gather(obj: list) -> list:
    st = _state()
    if st is None or st.num_processes == 1:
        return obj
    from accelerate.utils import gather_object

    return gather_object(obj)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def evaluate_encoder(
    encoder,
    *,
    config: EvalConfig,
    pipe=None,
    detector=None,
    clip: ClipScorer | None | bool = None,
    forget_items: Sequence[PromptItem] | None = None,
    retain_items: Sequence[PromptItem] | None = None,
    concept: ConceptSpec | None = None,
    encoder_name: str = "encoder",
) -> EvalResult:
    """Red-team ``encoder`` on ``config.concept`` and measure what else it lost.

    Args:
        encoder: the text encoder to evaluate (e.g. from ``load_robust_encoder``); not modified. On an SDXL
            pipeline: a :class:`~robust_encoders.core.text.TextEncoderPair` or a dict
            ``{"text_encoder": ..., "text_encoder_2": ...}`` (a missing key keeps the pipeline's own encoder).
        config: :class:`EvalConfig`.
        pipe: the Stable Diffusion pipeline whose UNet/VAE the encoder serves (default: the
            miniature pipeline); its own text encoder is the "original" reference.
        detector: a :class:`~robust_encoders.detectors.Detector` (default: the miniature detector).
        clip: a :class:`ClipScorer` (default: the miniature CLIP when the detector is the miniature
            one; ``False`` or no scorer on real SD: CLIP score and FID are ``None``).
        forget_items / retain_items: prompt sets (default: generated miniature sets).
        concept: the concept's :class:`ConceptSpec` (default: ``concept_spec(config.concept)``).
        encoder_name: label stored in the result.
    """
    t_start = time.perf_counter()
    st = _state()
    rank, world = (st.process_index, st.num_processes) if st is not None else (0, 1)
    main = rank == 0
    device = st.device if st is not None else torch.device("cpu")
    timing: dict[str, float] = {}

    if pipe is None:
        from ..miniature import load_pipeline

        pipe = load_pipeline()
    pipe = pipe.to(device)
    if detector is None:
        from ..detectors import MiniatureDetector

        detector = MiniatureDetector()
    from ..detectors import MiniatureDetector

    if clip is None and isinstance(detector, MiniatureDetector):
        clip = ClipScorer.miniature()  # the miniature world: its own CLIP
    clip = clip or None  # clip=False switches CLIP score and FID off
    spec = concept or concept_spec(config.concept)
    from ..miniature.concepts import CONCEPTS

    miniature_concept = spec.name in CONCEPTS
    if forget_items is None:
        if not miniature_concept:
            raise ValueError(
                f"{spec.name!r} is not a miniature concept, so there is no generated prompt set for it; pass "
                "forget_items=load_prompt_csv(PATH) (UnlearnDiffAtk / I2P columns)."
            )
        forget_items = miniature_forget_prompts(spec.name, config.n_prompts, config.seed, config.heldout_frac)
    forget_items = list(forget_items)[: config.n_prompts]
    if not forget_items:
        raise ValueError("The forget prompt set is empty.")
    if retain_items is None:
        retain_items = (miniature_retain_prompts(spec.name, config.n_retain, config.seed)
                        if miniature_concept and config.n_retain else [])
    retain_items = list(retain_items)[: config.n_retain]

    model = SDModel(pipe, steps=config.steps, guidance=config.guidance, batch_size=config.batch_size)
    original = model.original_encoder
    encoder = model.as_encoder(encoder).to(device).eval()
    ctx = AttackContext(model, encoder, original, detector, spec, config.seed)
    attacks = [build_attack(a, **config.attack_overrides.get(a, {})) for a in config.attacks]

    # -- per-process setup on the whole set (identical on every process) ----------------------------
    all_targets = [AttackTarget(i, it.prompt, it.seed, it.guidance, None, it.meta) for i, it in enumerate(forget_items)]
    for atk in attacks:
        t0 = time.perf_counter()
        atk.setup(ctx, all_targets)
        timing[atk.name] = time.perf_counter() - t0
    timing["plain"] = 0.0
    timing["retain"] = 0.0

    # -- forget prompts ------------------------------------------------------------------------------
    chunks = _chunks(len(forget_items), config.batch_size)
    mine = [c for c in range(len(chunks)) if c % world == rank]
    records: list[dict[str, Any]] = []
    bar = _bar(sum(len(chunks[c]) for c in mine), f"evaluate {spec.name}", config.progress and main)
    for c in mine:
        idx = chunks[c]
        items = [forget_items[i] for i in idx]
        seeds = [it.seed for it in items]
        guid = [it.guidance for it in items]
        prompts = [it.prompt for it in items]
        t0 = time.perf_counter()
        orig = model.generate(original, prompts, seeds=seeds, guidance=guid, return_latents=True)
        plain = model.generate(encoder, prompts, seeds=seeds, guidance=guid)
        orig_hit = ctx.detect(orig.images)
        pre_hit = ctx.detect(plain)
        timing["plain"] += time.perf_counter() - t0
        recs = []
        for j, i in enumerate(idx):
            rec = {"index": i, **items[j].to_dict(), "original_detected": bool(orig_hit[j]),
                   "pre_success": bool(pre_hit[j]), "attacks": {}}
            if i < config.grid_prompts:
                rec["_images"] = {"original": orig.images[j], "erased": plain[j]}
            recs.append(rec)
        todo = [j for j in range(len(idx)) if not pre_hit[j]]
        targets = [AttackTarget(idx[j], prompts[j], seeds[j], guid[j], orig.latents[j], items[j].meta) for j in todo]
        for a_i, atk in enumerate(attacks):
            t0 = time.perf_counter()
            outcomes = atk.attack(ctx, targets, seed=config.seed * 100_003 + c * 101 + a_i) if targets else []
            timing[atk.name] += time.perf_counter() - t0
            by_index = {o.index: o for o in outcomes}
            for rec in recs:
                o = by_index.get(rec["index"])
                rec["attacks"][atk.name] = o.record() if o is not None else {"success": False, "skipped": "pre_success"}
                if "_images" in rec:
                    rec["_images"][atk.name] = o.image if (o is not None and o.image is not None) else rec["_images"]["erased"]
        records.extend(recs)
        bar.update(len(idx))
    bar.close()

    # -- retain prompts ------------------------------------------------------------------------------
    retain_recs: list[dict[str, Any]] = []
    r_chunks = _chunks(len(retain_items), config.batch_size)
    r_mine = [c for c in range(len(r_chunks)) if c % world == rank]
    bar = _bar(sum(len(r_chunks[c]) for c in r_mine), "retain", config.progress and main)
    for c in r_mine:
        t0 = time.perf_counter()
        idx = r_chunks[c]
        items = [retain_items[i] for i in idx]
        seeds, guid, prompts = [it.seed for it in items], [it.guidance for it in items], [it.prompt for it in items]
        orig = model.generate(original, prompts, seeds=seeds, guidance=guid)
        erased = model.generate(encoder, prompts, seeds=seeds, guidance=guid)
        pred_e = detector.predict(erased)
        pred_o = detector.predict(orig)
        feats = {}
        if clip is not None:
            feats = {"orig": clip.image_features(orig), "erased": clip.image_features(erased),
                     "text": clip.text_features(prompts)}
        for j, i in enumerate(idx):
            rec = {"index": i, **items[j].to_dict(),
                   "pred_erased": {h: int(v[j]) for h, v in pred_e.items()},
                   "pred_original": {h: int(v[j]) for h, v in pred_o.items()}}
            if feats:
                rec["_feat_orig"], rec["_feat_erased"] = feats["orig"][j], feats["erased"][j]
                rec["clip_score"] = float((feats["erased"][j] * feats["text"][j]).sum().clamp(min=0))
            if i < 2:
                rec["_images"] = {"original": orig[j], "erased": erased[j]}
            retain_recs.append(rec)
        timing["retain"] += time.perf_counter() - t0
        bar.update(len(idx))
    bar.close()

    # -- gather and compute ---------------------------------------------------------------------------
    timing["total"] = time.perf_counter() - t_start
    all_records = sorted(_gather(records), key=lambda r: r["index"])
    all_retain = sorted(_gather(retain_recs), key=lambda r: r["index"])
    all_timing = _gather([timing])
    timing = {k: round(max(t[k] for t in all_timing), 3) for k in timing}

    pre = [r["pre_success"] for r in all_records]
    asr = {a.name: attack_success_rate(pre, [r["attacks"][a.name]["success"] for r in all_records]) for a in attacks}
    heads = getattr(detector, "heads", {})
    ret_acc, per_head = None, {}
    ret_acc_orig = None
    if all_retain:
        labels = [r["labels"] for r in all_retain]
        pe = {h: torch.tensor([r["pred_erased"][h] for r in all_retain]) for h in all_retain[0]["pred_erased"]}
        po = {h: torch.tensor([r["pred_original"][h] for r in all_retain]) for h in all_retain[0]["pred_original"]}
        ret_acc, per_head = retain_accuracy(pe, labels, heads)
        ret_acc_orig, _ = retain_accuracy(po, labels, heads)
    clip_score = fid = None
    if all_retain and "_feat_orig" in all_retain[0]:
        clip_score = sum(r["clip_score"] for r in all_retain) / len(all_retain)
        if len(all_retain) >= 2:
            fo = torch.stack([r["_feat_orig"] for r in all_retain])
            fe = torch.stack([r["_feat_erased"] for r in all_retain])
            fid = frechet_distance(fo, fe)

    cfg_dict = config.to_dict()
    cfg_dict["attack_configs"] = {a.name: _jsonable(a.config_dict()) for a in attacks}
    cfg_dict["n_retain"] = len(all_retain)
    cfg_dict["clip"] = getattr(clip, "name", None)
    summary = {
        "concept": spec.name,
        "concept_kind": spec.kind,
        "encoder": encoder_name,
        "detector": getattr(detector, "name", type(detector).__name__),
        "n_prompts": len(all_records),
        "seed": config.seed,
        "pre_asr": sum(pre) / len(pre) if pre else None,
        "asr": asr,
        "retain_accuracy": ret_acc,
        "clip_score": clip_score,
        "fid": fid,
        "timing_s": timing,
        "config": cfg_dict,
    }
    grid: dict[str, Any] = {}
    if main:
        grid = {
            "columns": ["original", "erased", *[a.name for a in attacks]],
            "forget": [(r["prompt"], r["_images"]) for r in all_records if "_images" in r],
            "retain": [(r["prompt"], r["_images"]) for r in all_retain if "_images" in r],
        }
    strip = ("_images", "_feat_orig", "_feat_erased")
    details = {
        "original_pre_asr": (sum(r["original_detected"] for r in all_records) / len(all_records)) if all_records else None,
        "original_retain_accuracy": ret_acc_orig,
        "retain_accuracy_per_head": per_head,
        "num_processes": world,
        "forget": [{k: v for k, v in r.items() if k not in strip} for r in all_records],
        "retain": [{k: v for k, v in r.items() if k not in strip} for r in all_retain],
    }
    return EvalResult(summary, details, grid)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
