"""Process-level tuning that changes speed, never results."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

_tuned: bool | None = None


def tune_malloc() -> bool:
    """Keep large CPU tensors on glibc's heap instead of fresh ``mmap`` pages; True when applied.

    By default glibc serves every allocation above its mmap threshold (at most 32 MiB) with a new
    ``mmap`` and unmaps it on free, so each step's large tensors (activations, full logits) are page
    faulted and zeroed by the kernel again, which slows small-model steps and most of all elementwise
    ops (measured in docs/results/efficiency-cpu.md). Raising the threshold to 1 GiB, padding
    heap growth and never trimming lets freed blocks be reused. The cost is that the process keeps
    its peak heap; it does not change any result. It is the in-process form of
    ``MALLOC_MMAP_THRESHOLD_ / MALLOC_TOP_PAD_ / MALLOC_TRIM_THRESHOLD_``; call it once, early (it
    also helps when called later). Returns False, doing nothing, where the C library is not glibc.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc < 2.35 refuses thresholds above 32 MiB: then turn mmap-backed allocations off instead.
    heap = mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_MAX, 0)
    pad = mallopt(_M_TOP_PAD, 1 << 30)  # grow the heap in big steps (virtual; untouched pages cost nothing)
    trim = mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)  # never give the heap top back between steps
    _tuned = bool(heap and pad and trim)
    return _tuned


def raise_compile_limits(limit: int = 256) -> None:
    """Lift dynamo's recompile limits so that many compiled models in one process all stay compiled.

    Every compiled FFN or model of a benchmark shares its ``forward`` code object, so past the default
    limit (8) of compiled versions per code object dynamo would silently fall back to eager.
    """
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))
