"""``robust-encoders evaluate`` and ``robust-encoders attack``.

Importing this module is cheap (argparse only); torch and the models load inside the handlers.
``register(subparsers)`` adds both commands; ``add_parser`` (evaluate) and ``add_attack_parser``
(attack) add one each, as the top-level CLI's per-command contract expects.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_attack_parser", "add_parser", "parse_overrides", "register", "run_attack", "run_evaluate"]

ATTACK_NAMES = ("unlearndiffatk", "soft_prompt", "ringabell", "synonym", "inversion")

EVALUATE_EXAMPLES = [
    "robust-encoders evaluate --encoder original --concept star",
    "robust-encoders evaluate --encoder runs/star-advunlearn --concept star --out eval/star",
    "robust-encoders evaluate --encoder runs/star-esd --concept star --attacks unlearndiffatk,synonym "
    "--set unlearndiffatk.steps=60",
    "accelerate launch --multi_gpu --num_processes 2 -m robust_encoders evaluate --encoder runs/star-esd "
    "--concept star   # 2 processes (GPUs, or CPU-only: gloo)",
    "robust-encoders evaluate --encoder nudity --concept nudity --pipeline ./sd-v1-4 --prompts nudity.csv "
    "--detector nudenet --retain-prompts coco.csv --clip ./clip-vit-large-patch14",
]
ATTACK_EXAMPLES = [
    "robust-encoders attack --encoder runs/star-esd --concept star --prompt 'a red star on a dotted background'",
    "robust-encoders attack --encoder runs/star-esd --concept star --attack soft_prompt --prompt 'a star' --seed 3",
    "robust-encoders attack --encoder nudity --concept nudity --pipeline ./sd-v1-4 --prompts nudity.csv "
    "--detector nudenet --attack unlearndiffatk --set unlearndiffatk.k=5",
]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", required=True,
                   help="Encoder to evaluate: 'original', a trainer run folder (robust_encoder.json + text_encoder/), "
                        "a save_pretrained / LoRA folder, or a registry name / Hub id (see `robust-encoders list`).")
    p.add_argument("--concept", required=True, help="Concept: a miniature concept (star, red, dots, ...) or a "
                                                    "real-SD one (nudity, vangogh, church, ...).")
    p.add_argument("--pipeline", default="miniature",
                   help="'miniature' (default, offline) or a local diffusers StableDiffusionPipeline folder.")
    p.add_argument("--detector", default=None,
                   help="'miniature' (default for the miniature pipeline), 'nudenet' (optional extra), or "
                        "'classifier:MODEL.pt' / 'classifier:module:factory'.")
    p.add_argument("--concept-words", default=None,
                   help="Comma-separated words that name a custom concept in prompts (canonical first).")
    p.add_argument("--synonyms", default=None, help="Comma-separated synonyms for the synonym attack.")
    p.add_argument("--seed", type=int, default=0, help="Seed of prompt sets and attacks (default 0).")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps per image (default 25).")
    p.add_argument("--guidance", type=float, default=7.5, help="Guidance scale (default 7.5; CSV rows may override).")
    p.add_argument("--batch-size", type=int, default=8, help="Prompts per chunk (default 8).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                   help="Attack setting override, repeatable (e.g. unlearndiffatk.steps=60, ringabell.etas=[1,3]).")
    p.add_argument("--device", default=None, help="torch device (default: accelerate's, else cpu).")
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``evaluate``."""
    from ..cli import add_command

    p = add_command(subparsers, "evaluate", help="red-team a text encoder on a concept and measure utility",
                    examples=EVALUATE_EXAMPLES,
                    description="Pre-ASR and ASR under each attack (UnlearnDiffAtk-style, soft prompt, Ring-A-Bell, "
                                "synonyms, concept inversion), retain accuracy, CLIP score and an FID-style distance. "
                                "Writes result.json, details.json, table.md and grid.png into --out.")
    _add_common(p)
    p.add_argument("--attacks", default="all",
                   help=f"Comma-separated attacks or 'all' / 'none' (all = {','.join(ATTACK_NAMES)}).")
    p.add_argument("--prompts", default=None, help="Forget prompts CSV (UnlearnDiffAtk/I2P columns: prompt, "
                                                   "evaluation_seed, evaluation_guidance). Default: generated miniature set.")
    p.add_argument("--retain-prompts", default=None, help="Retain prompts CSV (optional 'label'/'class' column).")
    p.add_argument("--clip", default=None, help="Local OpenAI-style CLIP folder for CLIP score / FID on real SD.")
    p.add_argument("--n-prompts", type=int, default=None,
                   help="Forget prompts (default: 24 generated miniature prompts, or every row of --prompts).")
    p.add_argument("--n-retain", type=int, default=None,
                   help="Retain prompts (default: 24 generated, or every row of --retain-prompts; 0 skips them).")
    p.add_argument("--heldout-frac", type=float, default=0.5, help="Share of held-out phrasings (miniature sets).")
    p.add_argument("--grid-prompts", type=int, default=6, help="Forget prompts shown in grid.png (default 6).")
    p.add_argument("--out", default=None, help="Output folder (default: eval/<encoder>-<concept>).")
    p.set_defaults(func=run_evaluate)
    return p


def add_attack_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``attack``."""
    from ..cli import add_command

    p = add_command(subparsers, "attack", help="run one attack on given prompts and show what it finds",
                    examples=ATTACK_EXAMPLES,
                    description="Attacks each prompt (with its seed) against the encoder and prints whether the "
                                "concept came back and the adversarial prompt found. Writes attack.json and grid.png.")
    _add_common(p)
    p.add_argument("--attack", default="unlearndiffatk", choices=ATTACK_NAMES, help="Attack (default unlearndiffatk).")
    p.add_argument("--prompt", action="append", default=[], help="A prompt to attack (repeatable).")
    p.add_argument("--prompts", default=None, help="CSV of prompts to attack (UnlearnDiffAtk/I2P columns).")
    p.add_argument("--limit", type=int, default=None, help="Attack at most this many prompts.")
    p.add_argument("--out", default=None, help="Output folder (default: attack/<encoder>-<concept>-<attack>).")
    p.set_defaults(func=run_attack)
    return p


def register(subparsers: Any) -> None:
    """Add both ``evaluate`` and ``attack``."""
    add_parser(subparsers)
    add_attack_parser(subparsers)


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["unlearndiffatk.steps=60"]`` -> ``{"unlearndiffatk": {"steps": 60}}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        attack, dot, field = key.strip().partition(".")
        if not sep or not dot or not field:
            raise ValueError(f"--set expects ATTACK.KEY=VALUE (e.g. unlearndiffatk.steps=60), got {pair!r}.")
        attack = attack.lower().replace("-", "_")
        if attack not in ATTACK_NAMES:
            raise ValueError(f"--set {pair!r}: unknown attack {attack!r}; choose from {', '.join(ATTACK_NAMES)}.")
        parsed = yaml.safe_load(value)
        out.setdefault(attack, {})[field] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [w.strip() for w in text.split(",") if w.strip()]


def _setup(args):
    """Pipeline, detector, concept spec and the encoder under test, from the common arguments."""
    import torch

    from ..attacks.base import concept_spec
    from ..detectors import load_detector
    from .loading import load_encoder_for_eval

    if args.pipeline == "miniature":
        from ..miniature import load_pipeline

        pipe = load_pipeline()
    else:
        import json

        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        path = Path(args.pipeline)
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(f"--pipeline {path}: not a diffusers pipeline folder (no model_index.json).")
        if "XL" in json.loads((path / "model_index.json").read_text()).get("_class_name", ""):
            pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None)
    if args.device:
        pipe = pipe.to(torch.device(args.device))
    det_spec = args.detector or ("miniature" if args.pipeline == "miniature" else None)
    if det_spec is None:
        raise ValueError("--detector is required with a real-SD --pipeline: 'nudenet' or 'classifier:...'.")
    detector = load_detector(det_spec)
    spec = concept_spec(args.concept, words=_split(args.concept_words), synonyms=_split(args.synonyms))
    encoder, label = load_encoder_for_eval(args.encoder, pipe=pipe)
    return pipe, detector, spec, encoder, label


def _is_main() -> bool:
    try:
        from accelerate import PartialState

        return PartialState().is_main_process
    except Exception:
        return True


def _fail(cmd: str, e: BaseException) -> int:
    """Print a user-facing error (no traceback) and return exit code 1, as the top-level CLI does."""
    print(f"robust-encoders {cmd}: error: {e}", file=sys.stderr)
    return 1


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ValueError, KeyError, FileNotFoundError, ImportError, RuntimeError]
    loading = sys.modules.get("robust_encoders.loading")
    if loading is not None:
        errors += [getattr(loading, n) for n in ("EncoderNotFoundError", "UnsafeCheckpointError",
                                                  "CheckpointMismatchError", "IncompatibleEncoderError")
                   if hasattr(loading, n)]
    return tuple(errors)


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``robust-encoders evaluate``."""
    try:
        from .evaluate import ALL_ATTACKS, EvalConfig, evaluate_encoder
        from .metrics import ClipScorer
        from .prompts import load_prompt_csv

        attacks = ALL_ATTACKS if args.attacks == "all" else () if args.attacks == "none" else tuple(_split(args.attacks))
        forget = load_prompt_csv(args.prompts, limit=args.n_prompts, default_seed=args.seed) if args.prompts else None
        retain = (load_prompt_csv(args.retain_prompts, limit=args.n_retain or None, default_seed=args.seed)
                  if args.retain_prompts and args.n_retain != 0 else None)
        n_prompts = args.n_prompts or (len(forget) if forget else 24)
        n_retain = args.n_retain if args.n_retain is not None else (len(retain) if retain else 24)
        config = EvalConfig(
            concept=args.concept, n_prompts=n_prompts, n_retain=n_retain, seed=args.seed, steps=args.steps,
            guidance=args.guidance, batch_size=args.batch_size, attacks=attacks,
            attack_overrides=parse_overrides(args.overrides), heldout_frac=args.heldout_frac,
            grid_prompts=args.grid_prompts, progress=not args.no_progress,
        )
        pipe, detector, spec, encoder, label = _setup(args)
        if forget is None and args.pipeline != "miniature":
            raise ValueError("A real-SD --pipeline needs --prompts CSV (generated prompt sets exist for the "
                             "miniature world only).")
        clip = ClipScorer.openai(args.clip) if args.clip else (None if args.pipeline == "miniature" else False)
    except Exception as e:
        if isinstance(e, _user_errors()):
            return _fail("evaluate", e)
        raise
    res = evaluate_encoder(encoder, config=config, pipe=pipe, detector=detector, clip=clip, forget_items=forget,
                           retain_items=retain if retain is not None else (None if args.pipeline == "miniature" else []),
                           concept=spec, encoder_name=label)
    if _is_main():
        out = Path(args.out or f"eval/{label}-{spec.name}")
        paths = res.save(out)
        from .report import markdown_table

        print(markdown_table([res.summary]))
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def run_attack(args: argparse.Namespace) -> int:
    """Handler of ``robust-encoders attack``."""
    try:
        from ..attacks.base import AttackContext, AttackTarget
        from ..attacks.pipeline_attacks import build_attack
        from ..attacks.sd import SDModel
        from .prompts import PromptItem, load_prompt_csv

        overrides = parse_overrides(args.overrides)
        attack = build_attack(args.attack, **overrides.get(args.attack, {}))
        if args.prompts:
            items = load_prompt_csv(args.prompts, limit=args.limit, default_seed=args.seed)
        elif args.prompt:
            items = [PromptItem(p, args.seed + i) for i, p in enumerate(args.prompt)][: args.limit]
        else:
            raise ValueError("Give prompts to attack with --prompt TEXT (repeatable) or --prompts CSV.")
        pipe, detector, spec, encoder, label = _setup(args)
    except Exception as e:
        if isinstance(e, _user_errors()):
            return _fail("attack", e)
        raise
    model = SDModel(pipe, steps=args.steps, guidance=args.guidance, batch_size=args.batch_size)
    encoder = model.as_encoder(encoder).eval()
    ctx = AttackContext(model, encoder, model.original_encoder, detector, spec, args.seed)
    seeds, guid = [it.seed for it in items], [it.guidance for it in items]
    orig = model.generate(ctx.original_encoder, [it.prompt for it in items], seeds=seeds, guidance=guid,
                          return_latents=True)
    plain = model.generate(encoder, [it.prompt for it in items], seeds=seeds, guidance=guid)
    pre = ctx.detect(plain)
    targets = [AttackTarget(i, it.prompt, it.seed, it.guidance, orig.latents[i], it.meta) for i, it in enumerate(items)]
    attack.setup(ctx, targets)
    outcomes = attack.attack(ctx, targets, seed=args.seed)
    rows = []
    for it, p, o in zip(items, pre.tolist(), outcomes, strict=True):
        rows.append({"prompt": it.prompt, "seed": it.seed, "pre_success": bool(p), **o.record()})
        flag = "BROKEN" if (p or o.success) else "held"
        print(f"[{flag:6}] {it.prompt!r} (seed {it.seed})")
        if o.prompt:
            print(f"         adversarial prompt: {o.prompt!r}  success={o.success} queries={o.queries}")
    n = len(rows)
    asr = sum(r["pre_success"] or r["success"] for r in rows) / n
    print(f"\n{args.attack}: ASR {asr:.1%} over {n} prompt(s) (pre-attack {sum(r['pre_success'] for r in rows) / n:.1%})")
    out = Path(args.out or f"attack/{label}-{spec.name}-{attack.name}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "attack.json").write_text(json.dumps({"concept": spec.name, "encoder": label, "attack": attack.name,
                                                 "config": attack.config_dict(), "asr": asr, "prompts": rows},
                                                indent=2, default=list) + "\n")
    from .report import save_grid

    grid = {"columns": ["original", "erased", attack.name],
            "forget": [(it.prompt, {"original": orig.images[i], "erased": plain[i],
                                     attack.name: outcomes[i].image if outcomes[i].image is not None else plain[i]})
                       for i, it in enumerate(items[:16])]}
    save_grid(grid, out / "grid.png")
    print(f"wrote {out / 'attack.json'}, {out / 'grid.png'}")
    return 0
