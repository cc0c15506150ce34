"""Lazy public names: a package lists what it exports, and each name's module is imported on first use.

The packages whose parts import torch, transformers or diffusers use it, so ``import robust_encoders`` and
``robust-encoders --help`` stay instant (the pattern of scientific-python's ``lazy_loader.attach``).

Example:
    >>> import sys, types
    >>> pkg = types.ModuleType("demo_pkg")
    >>> sys.modules["demo_pkg"] = pkg
    >>> pkg.__getattr__, pkg.__dir__ = attach("demo_pkg", {"sqrt": "math"}, ["sqrt"])
    >>> pkg.sqrt(9.0), "sqrt" in vars(pkg), "sqrt" in dir(pkg)
    (3.0, True, True)
    >>> pkg.cbrt
    Traceback (most recent call last):
    ...
    AttributeError: module 'demo_pkg' has no attribute 'cbrt'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["attach"]


def attach(
    package: str, exports: Mapping[str, str], public: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module-level ``__getattr__`` and ``__dir__`` for ``package``.

    ``exports`` maps each lazily exported name to the module that defines it, absolute or relative to ``package``
    (``".evaluate"``). A name, once imported, is stored in the package, so later lookups skip ``__getattr__``.
    ``public`` (the package's ``__all__``) is what ``dir()`` lists besides what the package already holds.
    """
    names = frozenset(public)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | names)

    return __getattr__, __dir__
