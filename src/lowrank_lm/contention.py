"""Other processes on the same cores: how many cores they keep busy, and the warning when that slows us.

Both the trainer's progress line and the benches warn about it, so it lives below both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def _proc_stat_cpu_line() -> str:
    return Path("/proc/stat").read_text().split("\n", 1)[0]


def busy_cores(interval: float = 0.25, read: Callable[[], str] = _proc_stat_cpu_line) -> float | None:
    """How many cores other processes keep busy right now: /proc/stat sampled over ``interval`` s.

    It counts the whole machine (or the whole host, in a container), this process included, so call it
    while this process is idle: then it sees the others. Unlike the load average, it does not remember
    a process that finished a minute ago (such as the previous stage of a benchmark script). None where
    /proc/stat is unavailable.
    """
    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in read().split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 4:
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    first = sample()
    if first is None:
        return None
    time.sleep(interval)
    second = sample()
    if second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * (total - idle) / total


def contention_warning(busy: float, cores: int, threads: int, consequence: str) -> str | None:
    """The one-line warning when ``busy`` cores (held by other processes) leave too few idle cores for our
    ``threads``, or None. Busy cores stall every multi-threaded op at its barrier, not just one thread."""
    if busy <= 0.5 or busy <= cores - threads:
        return None
    hint = " (--threads 1 avoids the worst stalls)" if threads > 1 else ""
    return f"warning: other processes keep {busy:.1f} of {cores} cores busy; {consequence}{hint}"
