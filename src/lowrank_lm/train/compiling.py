"""Whether the training step runs under torch.compile: the ``train.compile`` setting resolved for a device."""

from __future__ import annotations

import torch

COMPILED = "compiled training step (torch.compile)"
"""The fast path's name in warnings and :data:`lowrank_lm.fallback.TAKEN`; a step that fails to compile or run
compiled falls back to eager (Trainer._step_or_eager)."""

COMPILE_ON_CPU = False
"""What ``auto`` means on a CPU. Measured on the 2-core dev CPU (docs/results/fast-paths-cpu.md): compiling
made our training step 8% (scale-4) and 3.6% (Transformer-s) faster, but the first step took 21-31 s to
compile, in every run and resume, and the CPU runs of this project last minutes; so auto stays eager."""


def use_compile(setting: str | bool, device: torch.device) -> bool:
    """``train.compile`` for this device: true and false as given; auto is on for CUDA, COMPILE_ON_CPU on CPU."""
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and COMPILE_ON_CPU)
    return bool(setting)
