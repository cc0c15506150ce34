"""The ``robust-encoders`` command line (also ``python -m robust_encoders``).

Built-in commands: ``list`` and ``info``. Other modules contribute commands (``train``, ``evaluate``, ``attack``,
``export``, ``push``, ``pull``, ``miniature``) through :data:`SUBCOMMANDS`, without this file importing them
eagerly or failing when they do not exist yet.

Contract for a contributed command
----------------------------------
An entry ``(command, "package.module[:function]")`` in :data:`SUBCOMMANDS` (or an entry point in the group
``robust_encoders.cli`` whose value is ``"package.module:function"``, for plugins) means:

* ``function`` (default name ``add_parser``) is called once as ``function(subparsers)``, where ``subparsers`` is the
  ``argparse`` sub-parsers action; it adds **one** parser named ``command`` — preferably with
  :func:`add_command`, which sets the help, description and the mandatory ``Examples:`` epilog — and returns it;
* the parser sets ``func`` via ``parser.set_defaults(func=handler)``; ``handler(args: argparse.Namespace)``
  returns an exit code (``int``; ``None`` means 0);
* importing the module must be cheap (no torch/diffusers at module level: import them inside the handler), since
  every ``robust-encoders`` invocation imports it to build ``--help``;
* if the module does not exist (yet), the command is simply not offered; if it exists but fails to import,
  the command is still listed and explains the import error when run.

Example of a contributed module::

    # src/robust_encoders/attacks/cli.py
    from robust_encoders.cli import add_command

    def add_parser(subparsers):
        p = add_command(subparsers, "attack", help="red-team an encoder",
                        examples=["robust-encoders attack nudity --steps 50"])
        p.add_argument("encoder")
        p.set_defaults(func=run)
        return p

    def run(args) -> int:
        from .core import attack   # heavy imports here
        ...
        return 0
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__

__all__ = ["ENTRY_POINT_GROUP", "SUBCOMMANDS", "add_command", "build_parser", "main"]

#: Commands contributed by other modules: ``(command, "module.path[:function]")``; ``function`` defaults to
#: ``add_parser``. Missing modules are skipped, so entries may name modules that are not written yet.
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("train", "robust_encoders.training.cli:register"),
    ("evaluate", "robust_encoders.evaluation.cli:add_parser"),
    ("attack", "robust_encoders.attacks.cli:add_parser"),
    ("export", "robust_encoders.hub.cli:add_export_parser"),
    ("push", "robust_encoders.hub.cli:add_push_parser"),
    ("pull", "robust_encoders.hub.cli:add_pull_parser"),
    ("convert", "robust_encoders.hub.cli:add_convert_parser"),
    ("miniature", "robust_encoders.miniature.cli:register"),
)

#: Entry-point group through which installed plugins can add commands (value ``"module:function"``).
ENTRY_POINT_GROUP = "robust_encoders.cli"

Handler = Callable[[argparse.Namespace], "int | None"]


def add_command(
    subparsers: Any,
    name: str,
    *,
    help: str,
    examples: Sequence[str],
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add sub-command ``name`` with a one-line ``help``, an optional longer ``description`` and an
    ``Examples:`` epilog (at least one example is required: every command documents how to call it).

    >>> import argparse
    >>> sub = argparse.ArgumentParser(prog="robust-encoders").add_subparsers()
    >>> p = add_command(sub, "hello", help="say hello", examples=["robust-encoders hello"])
    >>> "Examples:" in p.epilog
    True
    """
    if not examples:
        raise ValueError(f"command {name!r} needs at least one example for its --help")
    epilog = "Examples:\n" + "\n".join(f"  {ex}" for ex in examples)
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ------------------------------------------------------------------------------------------------ built-ins
def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers).rstrip(), line.format(*("-" * w for w in widths)).rstrip()]
    out += [line.format(*row).rstrip() for row in rows]
    return "\n".join(out)


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import list_pretrained

    specs = list_pretrained(concept_kind=args.kind, family=args.family)
    if args.json:
        print(json.dumps([s.to_dict() for s in specs], indent=2))
        return 0
    if not specs:
        print("No prebuilt encoders match these filters.")
        return 0
    rows = [[s.name, s.concept, s.concept_kind, s.method, ",".join(s.families), s.file_format, s.license, s.location]
            for s in specs]
    print(_table(rows, ["NAME", "CONCEPT", "KIND", "METHOD", "FAMILIES", "FORMAT", "LICENSE", "SOURCE"]))
    print(f"\n{len(specs)} encoder(s). Details: robust-encoders info NAME. "
          "Use one: apply_robust_encoder(pipe, NAME).")
    return 0


def _cached_path(spec: Any) -> str | None:
    """Where a Hub entry's config sits in the local HF cache (no network), else ``None``."""
    if spec.repo_id is None:
        path = spec.resolve_local_path()
        return str(path) if path is not None and path.exists() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    filename = f"{spec.subfolder}/config.json" if spec.subfolder else "config.json"
    if spec.file_format == "peft":
        filename = filename.replace("config.json", "adapter_config.json")
    found = try_to_load_from_cache(spec.repo_id, filename, revision=spec.revision)
    return str(found.rsplit("/", 1)[0]) if isinstance(found, str) else None


def _cmd_info(args: argparse.Namespace) -> int:
    from .registry import get_pretrained

    spec = get_pretrained(args.name)
    data = spec.to_dict()
    cached = _cached_path(spec)
    if args.json:
        data["cached_at"] = cached
        print(json.dumps(data, indent=2))
        return 0
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        if key == "description" and value:
            value = textwrap.fill(str(value), 100, subsequent_indent=" " * (width + 2))
        print(f"{key:<{width}}  {value if value not in (None, '') else '-'}")
    print(f"{'downloaded':<{width}}  {cached or 'no (robust-encoders pull ' + spec.name + ')'}")
    print("\nUse it:")
    print("  from robust_encoders import apply_robust_encoder")
    print(f"  pipe = apply_robust_encoder(pipe, {spec.name!r})   # pipe: a diffusers "
          f"{'/'.join(spec.families)} pipeline, e.g. {spec.base_models[0] if spec.base_models else '...'}")
    if spec.repo_id is not None:
        print("Pre-download (for offline machines):")
        print(f"  robust-encoders pull {spec.name}")
        print(f"  {spec.download_command()}")
    return 0


# ------------------------------------------------------------------------------------------------ registration
def _module_missing(module: str, exc: ModuleNotFoundError) -> bool:
    """True when ``exc`` says ``module`` itself (or a parent package of it) does not exist."""
    missing = exc.name or ""
    if not missing:
        return False
    return missing == module or module.startswith(missing + ".")


def _broken_command(subparsers: Any, name: str, target: str, exc: BaseException) -> None:
    reason = f"{exc.__class__.__name__}: {exc}"
    parser = subparsers.add_parser(
        name,
        help=f"(unavailable: {target} failed to import)",
        description=f"This command is provided by {target}, which failed to import:\n  {reason}",
        epilog=f"Examples:\n  robust-encoders {name} --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def run(args: argparse.Namespace) -> int:
        print(f"robust-encoders {name}: unavailable, because {target} failed to import: {reason}",
              file=sys.stderr)
        return 1

    parser.set_defaults(func=run, _broken=True)


def _register(subparsers: Any, name: str, target: str) -> None:
    module, _, attr = target.partition(":")
    attr = attr or "add_parser"
    try:
        if importlib.util.find_spec(module) is None:
            return
    except ModuleNotFoundError as exc:  # a parent package is missing
        if _module_missing(module, exc):
            return
        _broken_command(subparsers, name, module, exc)
        return
    except Exception as exc:  # importing a parent package raised
        _broken_command(subparsers, name, module, exc)
        return
    try:
        mod = importlib.import_module(module)
        add = getattr(mod, attr)
        add(subparsers)
    except ModuleNotFoundError as exc:
        if _module_missing(module, exc):
            return
        _broken_command(subparsers, name, module, exc)
    except Exception as exc:
        _broken_command(subparsers, name, f"{module}:{attr}", exc)


def _entry_point_commands() -> list[tuple[str, str]]:
    try:
        from importlib.metadata import entry_points

        return [(ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)]
    except Exception:  # pragma: no cover - broken metadata must not break the CLI
        return []


BUILTIN_COMMANDS = ("list", "info")


def build_parser(
    extra: Sequence[tuple[str, str]] | None = None, *, only: str | None = None
) -> argparse.ArgumentParser:
    """The ``robust-encoders`` parser: built-ins, then :data:`SUBCOMMANDS`, then plugins (and ``extra``).

    With ``only`` set to a command name, contributed modules other than that command's are not imported (so
    ``robust-encoders list`` never pays for importing torch through another command's module).
    """
    parser = argparse.ArgumentParser(
        prog="robust-encoders",
        description="Adversarially robust, concept-erased CLIP text encoders for Stable Diffusion: "
                    "list, load, train, red-team and share them.",
        epilog=textwrap.dedent("""\
            Examples:
              robust-encoders list
              robust-encoders list --kind object --family sd1
              robust-encoders info nudity
              python -m robust_encoders info "Garbage Truck" --json

            In Python:
              from robust_encoders import apply_robust_encoder
              pipe = apply_robust_encoder(pipe, "nudity")
            """),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"robust-encoders {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = add_command(subparsers, "list", help="list the prebuilt robust encoders",
                    examples=["robust-encoders list", "robust-encoders list --kind style",
                              "robust-encoders list --family sd1 --json"])
    p.add_argument("--kind", choices=["nudity", "style", "object", "colour"], help="only this concept kind")
    p.add_argument("--family", help="only encoders that fit this base family (sd1, sd2, sdxl, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_list)

    p = add_command(subparsers, "info", help="show everything about one prebuilt encoder",
                    description="Show a registry entry: concept, method, licence, where its files live, whether "
                                "they are on this machine, and how to use or pre-download it. Names ignore case, "
                                "spaces, '-' and '_'.",
                    examples=["robust-encoders info nudity", 'robust-encoders info "garbage truck"',
                              "robust-encoders info vangogh --json"])
    p.add_argument("name", help="registry name, e.g. nudity")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    if only in BUILTIN_COMMANDS:
        return parser
    seen = set(BUILTIN_COMMANDS)
    for name, target in [*SUBCOMMANDS, *(extra or ()), *_entry_point_commands()]:
        if name in seen or (only is not None and name != only):
            continue
        seen.add(name)
        _register(subparsers, name, target)
    return parser


def _requested_command(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line, if it is the first positional argument."""
    for arg in argv:
        if arg.startswith("-"):
            return None  # global options first (--help, --version): build everything
        return arg
    return None


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user (printed without a traceback)."""
    from .registry import RegistryError, UnknownEncoderError

    errors: list[type[BaseException]] = [UnknownEncoderError, RegistryError]
    loading = sys.modules.get("robust_encoders.loading")
    if loading is not None:
        errors += [loading.EncoderNotFoundError, loading.UnsafeCheckpointError,
                   loading.CheckpointMismatchError, loading.IncompatibleEncoderError]
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {name for name, _ in SUBCOMMANDS} | set(BUILTIN_COMMANDS)
    requested = _requested_command(argv)
    parser = build_parser(only=requested if requested in known else None)
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        code = func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"robust-encoders {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
