"""GPU fast paths that fall back, loudly: a fast path that fails at run time warns once and the eager path runs.

The fast paths taken by default on CUDA (CUDA-graph decoding, the compiled training step with its ``torch.cond``
self-guidance, liger's fused loss, cuBLASLt's bias + GELU epilogue) compute what an eager path beside them
computes. If one fails on a user's card, driver or library version, the run should not fail with it: the
failure is said in one line on stderr, the fast path is not tried again in this process, and the eager path
gives the result instead. :data:`TAKEN` records which path each one took (``scripts/gpu_bench.sh smoke``
prints it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TAKEN: dict[str, str] = {}
"""Fast path name -> "fast" (it ran) or "eager" (it failed and the eager path ran), in this process."""


def failed(name: str) -> bool:
    """Whether ``name`` failed earlier in this process (and is not to be tried again)."""
    return TAKEN.get(name) == "eager"


def fell_back(name: str, error: BaseException) -> None:
    """Record that fast path ``name`` failed; the first time, say so in one line on stderr."""
    if failed(name):
        return
    TAKEN[name] = "eager"
    first = (str(error).strip().splitlines() or [""])[0][:200]
    sys.stderr.write(f"warning: {name} failed ({type(error).__name__}: {first}); continuing on the eager path, "
                     "which computes the same\n")
    sys.stderr.flush()


def ran(name: str) -> None:
    """Record that fast path ``name`` ran."""
    TAKEN.setdefault(name, "fast")


def try_fast(name: str, fn: Callable[..., T | None], *args, **kwargs) -> T | None:
    """``fn(*args, **kwargs)``, or None when it raised (warned once) or failed before: the caller then takes its
    eager path. ``fn`` may itself return None for "does not apply here"."""
    if failed(name):
        return None
    try:
        out = fn(*args, **kwargs)
    except Exception as e:  # whatever a kernel, compiler or driver raises: the eager path is always there
        fell_back(name, e)
        return None
    if out is not None:
        ran(name)
    return out
