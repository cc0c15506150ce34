"""``robust-encoders attack`` (the parser lives with ``evaluate`` in :mod:`robust_encoders.evaluation.cli`)."""

from __future__ import annotations

from typing import Any

__all__ = ["add_parser"]


def add_parser(subparsers: Any):
    """Add the ``attack`` command (cheap to import: argparse only)."""
    from ..evaluation.cli import add_attack_parser

    return add_attack_parser(subparsers)
