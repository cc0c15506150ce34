"""``robust-encoders export | push | pull | convert``.

Two ways in, same parsers:

* :func:`register` adds all four sub-commands to an ``argparse`` sub-parsers action;
* ``add_export_parser`` / ``add_push_parser`` / ``add_pull_parser`` / ``add_convert_parser`` each add one, for
  :data:`robust_encoders.cli.SUBCOMMANDS` entries such as ``("push", "robust_encoders.hub.cli:add_push_parser")``.

Every parser has an ``Examples:`` epilog and ``set_defaults(func=handler)``; ``handler(args) -> int`` returns 0 on
success and 1 after printing a one-paragraph error (what went wrong, what to do) to stderr. Importing this module
is cheap: torch and huggingface_hub load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from ..cli import add_command

__all__ = [
    "add_convert_parser",
    "add_export_parser",
    "add_pull_parser",
    "add_push_parser",
    "register",
    "run_convert",
    "run_export",
    "run_pull",
    "run_push",
]


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..loading.errors import CheckpointMismatchError, EncoderNotFoundError, UnsafeCheckpointError
    from ..registry import RegistryError, UnknownEncoderError
    from .errors import ExportError, HubError

    return (ExportError, HubError, EncoderNotFoundError, UnsafeCheckpointError, CheckpointMismatchError,
            UnknownEncoderError, RegistryError, FileNotFoundError, FileExistsError, ValueError)


def _wrap(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), 100)


def _guard(command: str, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _user_errors() as exc:
            print(f"robust-encoders {command}: error: {exc}", file=sys.stderr)
            return 1

    run.__name__ = run.__qualname__ = f"run_{command}"
    run.__doc__ = fn.__doc__
    return run


# ------------------------------------------------------------------------------------------------ export
def _export(args: argparse.Namespace) -> int:
    """Handler of ``robust-encoders export``."""
    from .export import export_run

    out = export_run(args.run_dir, args.out, eval_results=args.eval, repo_id=args.repo_id,
                     overwrite=args.overwrite, license=args.license)
    print(f"Exported {args.run_dir} to {out}:")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out).as_posix()}")
    target = args.repo_id or "ORG/NAME"
    print(f"Check {out / 'README.md'}, then: robust-encoders push {out} --repo-id {target}")
    return 0


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export``: trainer run folder -> Hub-layout folder with a model card."""
    p = add_command(
        subparsers, "export", help="turn a training run into a Hub-ready folder with a model card",
        description=_wrap(
            "Write a Hub-layout folder for a trained encoder: config.json + model.safetensors (full "
            "encoder) or adapter_config.json + adapter_model.safetensors (LoRA; SDXL pairs in "
            "text_encoder/ and text_encoder_2/), robust_encoder.json, and a README.md model card with the "
            "measured Pre-ASR, ASR per attack, retain accuracy, CLIP score and FID-style distance, the full "
            "recipe and a get-started snippet. Written atomically; an existing README.md is merged (text "
            "outside the generated block is kept), never replaced."),
        examples=["robust-encoders export runs/church --out exports/church",
                  "robust-encoders export runs/church --out exports/church --repo-id me/church-robust",
                  "robust-encoders export runs/nudity --out exports/nudity --eval runs/nudity/eval/results.json "
                  "--license mit --overwrite"],
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `robust-encoders train`")
    p.add_argument("--out", required=True, metavar="DIR", help="destination folder")
    p.add_argument("--eval", metavar="RESULTS_JSON",
                   help="evaluation results (default: RUN_DIR/eval/results.json when it exists)")
    p.add_argument("--repo-id", metavar="ORG/NAME", help="Hub id the card's snippet should load from")
    p.add_argument("--license", metavar="ID", help="licence of the weights (default: from the run, else 'other')")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export (README.md is merged)")
    p.set_defaults(func=run_export)
    return p


# ------------------------------------------------------------------------------------------------ push
def _push(args: argparse.Namespace) -> int:
    """Handler of ``robust-encoders push``."""
    from .push import push_to_hub

    result = push_to_hub(args.folder, args.repo_id, subfolder=args.subfolder, revision=args.revision,
                         private=args.private, create_pr=args.create_pr, token=args.token, dry_run=args.dry_run,
                         endpoint=args.endpoint, commit_message=args.message)
    if result.dry_run:
        return 0
    print(f"Pushed {result.plan.folder} -> {result.url}")
    if result.commit_url:
        print(f"  commit: {result.commit_url}")
    print(f"Load it with: load_robust_encoder({result.plan.location!r}"
          + (f", revision={result.plan.revision!r}" if result.plan.revision else "") + ")")
    return 0


def add_push_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``push``: upload an exported folder with ``create_repo`` + ``upload_folder``."""
    p = add_command(
        subparsers, "push", help="upload an exported encoder folder to the Hugging Face Hub",
        description=_wrap(
            "Create the repo if needed and upload the folder in one commit (token from --token, HF_TOKEN "
            "or `hf auth login`). --dry-run prints the plan and sends nothing. The local folder is never "
            "modified; if the push fails half-way, run it again to finish."),
        examples=["robust-encoders push exports/church --repo-id me/church-robust --dry-run",
                  "robust-encoders push exports/church --repo-id me/church-robust",
                  "robust-encoders push exports/church --repo-id my-org/robust-encoders --subfolder church "
                  "--create-pr",
                  "robust-encoders push exports/church --repo-id me/church-robust --revision v2 --private"],
    )
    p.add_argument("folder", metavar="DIR", help="folder written by `robust-encoders export`")
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="target repo (created when missing)")
    p.add_argument("--subfolder", metavar="S", help="upload into this folder of the repo")
    p.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created from main when missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private (if it is created now)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--endpoint", metavar="URL", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("-m", "--message", help="commit message")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded; send nothing")
    p.set_defaults(func=run_push)
    return p


# ------------------------------------------------------------------------------------------------ pull
def _pull(args: argparse.Namespace) -> int:
    """Handler of ``robust-encoders pull``."""
    from .pull import pull

    folder = pull(args.name, cache_dir=args.cache_dir, revision=args.revision, endpoint=args.endpoint,
                  token=args.token)
    print(f"{args.name}: files are in {folder}")
    print(f"Offline from now on: load_robust_encoder({args.name!r}, local_files_only=True)"
          + ("" if args.cache_dir is None else f"  # with cache_dir={args.cache_dir!r}"))
    return 0


def add_pull_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pull``: pre-download a registry entry into the HF cache."""
    p = add_command(
        subparsers, "pull", help="pre-download a prebuilt encoder so it loads offline later",
        description=_wrap(
            "Download a registry entry (or a Hub 'org/repo[/subfolder]') into the Hugging Face cache, "
            "including the base encoder of a LoRA adapter, then check it loads with the network off."),
        examples=["robust-encoders pull nudity", "robust-encoders pull vangogh --cache-dir /data/hf-cache",
                  "robust-encoders pull OPTML-Group/AdvUnlearn/church_unlearned",
                  "HF_ENDPOINT=https://hf-mirror.example robust-encoders pull tench"],
    )
    p.add_argument("name", metavar="NAME", help="registry name (see `robust-encoders list`) or org/repo[/subfolder]")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit (default: the registry's, else main)")
    p.add_argument("--cache-dir", metavar="DIR", help="Hugging Face cache folder (default: the standard one)")
    p.add_argument("--endpoint", metavar="URL", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--token", help="Hub token for private or gated repos")
    p.set_defaults(func=run_pull)
    return p


# ------------------------------------------------------------------------------------------------ convert
def _convert(args: argparse.Namespace) -> int:
    """Handler of ``robust-encoders convert``."""
    from .convert import convert_legacy_bin

    out = convert_legacy_bin(args.src, args.out, config=args.config, overwrite=args.overwrite)
    print(f"Converted {args.src} -> {out} (config.json + model.safetensors)")
    print(f"Load it with: load_robust_encoder({str(out)!r})")
    return 0


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``convert``: legacy ``pytorch_model.bin`` -> safetensors, loading with ``weights_only=True`` only."""
    p = add_command(
        subparsers, "convert", help="convert a legacy pytorch_model.bin text encoder to safetensors",
        description=_wrap(
            "Read a legacy pickle text encoder (e.g. the AdvUnlearn release) with "
            "torch.load(weights_only=True) only — a pickle that would run code is refused — map transformers "
            "4 key names onto the current layout, check the weights fit the config, and save "
            "config.json + model.safetensors."),
        examples=["robust-encoders convert AdvUnlearn/nudity_unlearned --out encoders/nudity",
                  "robust-encoders convert old/pytorch_model.bin --out encoders/old --config old/config.json",
                  "robust-encoders convert old/pytorch_model.bin --out encoders/old --overwrite"],
    )
    p.add_argument("src", metavar="SRC", help="pytorch_model.bin, or the folder holding it (and config.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--config", metavar="CONFIG_JSON",
                   help="config.json (or its folder); default: next to the weights, else inferred from shapes")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=run_convert)
    return p


run_export = _guard("export", _export)
run_push = _guard("push", _push)
run_pull = _guard("pull", _pull)
run_convert = _guard("convert", _convert)


def register(subparsers: Any) -> list[argparse.ArgumentParser]:
    """Add the ``export``, ``push``, ``pull`` and ``convert`` sub-commands; return their parsers."""
    return [add(subparsers) for add in (add_export_parser, add_push_parser, add_pull_parser, add_convert_parser)]
