"""lowrank-lm: Transformer language models with low-rank and structured feed-forward layers.

``lowrank_lm.load(path)`` and ``lowrank_lm.build(config)`` (see :mod:`lowrank_lm.api`) are imported
on first use, so ``import lowrank_lm`` stays cheap (no torch) for the CLI and for tools that only
read the version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lowrank_lm.version import __version__

__all__ = ["__version__", "build", "load", "load_structurized", "merge_structures", "structurize"]

if TYPE_CHECKING:
    from lowrank_lm.anymodel import load_structurized, merge_structures, structurize
    from lowrank_lm.api import build, load

_LAZY = {"load": "lowrank_lm.api", "build": "lowrank_lm.api", "structurize": "lowrank_lm.anymodel",
         "load_structurized": "lowrank_lm.anymodel", "merge_structures": "lowrank_lm.anymodel"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module 'lowrank_lm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
