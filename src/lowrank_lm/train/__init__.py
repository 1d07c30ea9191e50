"""Training: the loop, its schedules, self-guided training, distribution, evaluation and outputs."""

from lowrank_lm.train.loop import forward_backward, run_training

__all__ = ["forward_backward", "run_training"]
