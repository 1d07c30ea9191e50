"""Interleaved latency measurement: torch.utils.benchmark on CPU, CUDA events on GPU.

Variants are timed round-robin, one block of calls each per round, and the starting variant rotates
every round, so a burst of load from another process lands on all variants alike instead of on
whichever ran at that moment. Each round's per-call time is one sample; we report the median and
the spread of the samples.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import benchmark


@dataclass
class Timing:
    """Per-call latency samples of one variant (one sample per round), in milliseconds."""

    samples_ms: list[float]
    calls_per_round: int

    @property
    def median_ms(self) -> float:
        """The median round: what the tables report."""
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        """The fastest round."""
        return min(self.samples_ms)

    @property
    def max_ms(self) -> float:
        """The slowest round."""
        return max(self.samples_ms)

    @property
    def iqr_ms(self) -> float:
        """Interquartile range: the spread that one noisy round cannot inflate."""
        if len(self.samples_ms) < 2:
            return 0.0
        q = statistics.quantiles(self.samples_ms, n=4, method="inclusive")
        return q[2] - q[0]

    def to_dict(self) -> dict:
        """The summary statistics for a result row (not the samples)."""
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "max_ms": self.max_ms,
                "iqr_ms": self.iqr_ms, "rounds": len(self.samples_ms), "calls_per_round": self.calls_per_round}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock bounds cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_block(fn: Callable[[], object], number: int, device: torch.device) -> float:
    """Seconds per call over ``number`` back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / number
    # Timer pins its own thread count (1 by default): pass ours, or every CPU number is single-threaded.
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.timeit(number).mean


def measure(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int = 7,
            min_round_s: float = 0.05, warmup: int = 2) -> dict[str, Timing]:
    """Time every variant in ``fns`` interleaved; ``rounds`` samples each.

    Each variant first runs ``warmup`` times (allocator, caches, lazy kernel selection); the last
    warm-up call sets how many calls make one round (at least ``min_round_s`` seconds, so the
    timer's own overhead is negligible for microsecond-scale calls).
    """
    number: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(max(warmup - 1, 0)):
            fn()
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        per_call = max(time.perf_counter() - t0, 1e-7)
        number[name] = max(1, min(10_000, round(min_round_s / per_call)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(_time_block(fns[name], number[name], device) * 1e3)
    return {name: Timing(samples[name], number[name]) for name in names}
