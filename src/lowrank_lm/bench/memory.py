"""Peak memory of one piece of work: CUDA's allocator statistics, or the process's peak RSS on Linux.

On CPU there is no allocator counter, so we hand freed heap memory back to the kernel
(``malloc_trim``), reset the kernel's peak-RSS mark (``/proc/self/clear_refs``) and read how far
above the starting RSS the work went. Where either is unavailable the peak is unknown (None).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from pathlib import Path

import torch


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def peak_bytes_during(work: Callable[[], object], device: torch.device) -> int | None:
    """Run ``work`` once; return how many bytes above the memory in use before it the process peaked."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _trim_heap()  # without it, heap kept by tune_malloc would hide the work's own growth
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        work()
        return None
    work()
    peak = _status_kib("VmHWM")
    return None if peak is None or before is None else max(0, peak - before) * 1024
