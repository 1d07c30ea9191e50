"""Learning-rate and self-guidance schedules (pure functions of the step)."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, peak: float, warmup_ratio: float, min_lr_ratio: float) -> float:
    """The paper's schedule: linear warmup over warmup_ratio x total steps, then cosine to min_lr_ratio x peak.

    Warmup gives (step + 1) / warmup x peak, so the first step already moves; the cosine reaches its floor at
    the last step (step = total_steps - 1).
    """
    warmup = int(warmup_ratio * total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = min_lr_ratio * peak
    span = max(1, total_steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def guide_alpha_at(step: int, guided_steps: int, schedule: str) -> float:
    """Weight of the dense guide at a step: 1 at step 0, decaying to 0 at ``guided_steps`` (cosine or linear)."""
    if guided_steps <= 0 or step >= guided_steps:
        return 0.0
    progress = step / guided_steps
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
