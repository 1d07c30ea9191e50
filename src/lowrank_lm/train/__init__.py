"""Training: the loop, its schedules, self-guided training, distribution, evaluation and outputs.

``run_training`` and ``forward_backward`` are imported on first use, so that the light modules of this
package (the run-folder layout, the run summary) can be read without importing torch (the sweep does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lowrank_lm.train.loop import forward_backward, run_training

__all__ = ["forward_backward", "run_training"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lowrank_lm.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'lowrank_lm.train' has no attribute {name!r}")
