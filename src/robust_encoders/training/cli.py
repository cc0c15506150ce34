"""``robust-encoders train``: the command-line front of :func:`robust_encoders.training.train`.

The package CLI calls :func:`register` to add the ``train`` subcommand; ``python -m
robust_encoders.training ...`` and ``accelerate launch -m robust_encoders.training ...`` use
:func:`main` directly.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["EPILOG", "register", "add_arguments", "run_train", "main"]

EPILOG = """\
examples:
  # erase a miniature concept with its recipe (offline, ~10 min on 2 CPU cores)
  robust-encoders train --concept star
  robust-encoders train --recipe recipes/miniature_red.yaml --output-dir runs/red
  # dotted overrides after the options (unknown keys are an error)
  robust-encoders train --concept stripes attack.steps=5 retain.weight=0.5 trainable.part=lora
  # continue an interrupted run, or start it again from scratch
  robust-encoders train --concept star --output-dir runs/star --resume
  robust-encoders train --concept star --output-dir runs/star --overwrite
  # real Stable Diffusion 1.4 (base weights must be in the local Hugging Face cache or a folder)
  robust-encoders train --concept vangogh model.base_model=/models/stable-diffusion-v1-4
  # several processes / GPUs
  accelerate launch --num_processes 2 -m robust_encoders train --concept star
  # inspect
  robust-encoders train --concept star --print-config
  robust-encoders train --list-recipes
  robust-encoders train --options
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", metavar="PATH", help="Recipe YAML (see recipes/).")
    p.add_argument(
        "--concept", metavar="NAME",
        help="Concept to erase: picks its recipe (miniature: star, red, stripes, ...; real: nudity, vangogh, church, "
        "garbage_truck, parachute, tench). With --recipe: overrides concept.name.",
    )
    p.add_argument("-o", "--output-dir", metavar="DIR", help="Run folder (default: runs/<recipe>).")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="Continue the run in --output-dir from its newest checkpoint.")
    g.add_argument("--overwrite", action="store_true", help="Replace the run already in --output-dir.")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                   help="A dotted override (same as a positional KEY=VALUE); repeatable.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Dotted config overrides, e.g. attack.steps=5.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar (log.progress=false).")
    p.add_argument("--print-config", action="store_true", help="Print the resolved config as YAML and exit.")
    p.add_argument("--list-recipes", action="store_true", help="List the available recipes and exit.")
    p.add_argument("--options", action="store_true", help="List every config key with its default and help, and exit.")


def run_train(args: argparse.Namespace) -> int:
    """Entry point of the ``train`` subcommand; returns the exit status."""
    from .config import ConfigError, config_help
    from .recipes import list_recipes
    from .trainable import LoraTargetError
    from .trainer import BaseModelUnavailableError, RunDirError, resolve_config, train

    try:
        if args.list_recipes:
            for name in list_recipes():
                print(name)
            return 0
        if args.options:
            for key, text, default in config_help():
                print(f"{key} = {default!r}\n    {text}")
            return 0
        if not args.recipe and not args.concept:
            print("error: say what to train: --concept NAME or --recipe PATH (see --help).", file=sys.stderr)
            return 2
        overrides = list(args.set_) + list(args.overrides)
        if args.no_progress:
            overrides.append("log.progress=false")
        if args.recipe:
            if args.concept:
                overrides.insert(0, f"concept.name={args.concept}")
            cfg = resolve_config(args.recipe, overrides)
        else:
            cfg = resolve_config(args.concept, overrides)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        run = train(cfg, output_dir=args.output_dir, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, RunDirError, BaseModelUnavailableError, LoraTargetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"Robust text encoder written to {run / 'text_encoder'} (run folder {run}).")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to the package CLI's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="Train a robust concept-erased text encoder (AdvUnlearn recipe).",
        description="Fine-tune the text encoder of a Stable Diffusion pipeline so that a concept stays erased, "
        "also under adversarial prompts (AdvUnlearn: ESD-style unlearning + inner prompt attack + retain "
        "regularisation). Offline; resumable; multi-process with accelerate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run_train)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m robust_encoders.training [train] ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="robust-encoders train", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a robust concept-erased text encoder (AdvUnlearn recipe).",
    )
    add_arguments(parser)
    return run_train(parser.parse_args(argv))
