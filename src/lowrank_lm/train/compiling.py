"""Whether the training step runs under torch.compile: the ``train.compile`` setting resolved for a device."""

from __future__ import annotations

import torch

COMPILED = "compiled training step (torch.compile)"
"""The fast path's name in warnings and :data:`lowrank_lm.fallback.TAKEN`; a step that fails to compile or run
compiled falls back to eager (Trainer._step_or_eager)."""

COMPILE_ON_CPU = False
"""What ``auto`` means on a CPU: eager. Compiling made the step only a little faster on the 2-core CPUs this
project runs on, while the first step's compile costs tens of seconds in every run and resume, and these CPU
runs last minutes (the measurement and its command: docs/results/fast-paths-cpu.md)."""


def use_compile(setting: str | bool, device: torch.device) -> bool:
    """``train.compile`` for this device: true and false as given; auto is on for CUDA, COMPILE_ON_CPU on CPU."""
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and COMPILE_ON_CPU)
    return bool(setting)
