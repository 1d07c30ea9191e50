"""Whether the training step runs under torch.compile: the ``train.compile`` setting resolved for a device."""

from __future__ import annotations

import torch

COMPILE_ON_CPU = False
"""What ``auto`` means on a CPU. Measured on the 2-core dev CPU (docs/results/fast-paths-cpu.md): compiling
our training step gained 0-7% at the CPU presets while each run pays tens of seconds of compilation,
and the CPU runs of this project are short; so auto leaves CPU runs eager."""


def use_compile(setting: str | bool, device: torch.device) -> bool:
    """``train.compile`` for this device: true and false as given; auto is on for CUDA, COMPILE_ON_CPU on CPU."""
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and COMPILE_ON_CPU)
    return bool(setting)
