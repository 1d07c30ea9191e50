"""Self-guided training: a dense guide W beside each structured layer, weighted by alpha decaying 1 -> 0.

o = alpha W x + (1 - alpha) U(V x). W starts as the merged structured weight so the output is continuous
(``guide_init: reference`` starts BlockShuffle's W as the reference code does, see :func:`reference_guide_start`);
after ``ratio x steps`` steps the guides leave the model and the optimiser and cost nothing. In fixedflop mode
the guided steps are appended again at the end, re-reading the first batches, so that the total FLOPs
match the dense model's (reference section 3.3).
"""

from __future__ import annotations

import torch
from torch import nn

from lowrank_lm.config import SelfGuidedConfig
from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.layers.blockshuffle import BlockShuffleLinear
from lowrank_lm.model import Transformer
from lowrank_lm.train.schedule import guide_alpha_at


@torch.no_grad()
def reference_guide_start(layer: StructuredLinear) -> torch.Tensor:
    """The guide the reference code (CLAIRE-Labo/StructuredFFN) starts from, as an (out, in) matrix.

    It multiplies the layer's factors as plain matrices. For LowRank and BlockDense that is the layer's own
    matrix; for BlockShuffle it is block_diag(second factor) x block_diag(first factor), which leaves out the
    shuffle between them, so the guide starts block-diagonal instead of at the layer's matrix.
    """
    if isinstance(layer, BlockShuffleLinear):
        return torch.block_diag(*layer.blocks_out) @ torch.block_diag(*layer.blocks_in)
    return layer.merged_weight()


class SelfGuidance:
    """Drives the guides of a model over a run of ``steps`` (unique-data) steps."""

    def __init__(self, cfg: SelfGuidedConfig, steps: int) -> None:
        self.cfg = cfg
        self.guided_steps = int(cfg.ratio * steps) if cfg.enabled else 0
        self.extra_steps = self.guided_steps if cfg.enabled and cfg.mode == "fixedflop" else 0
        self.unique_steps = steps

    @property
    def total_steps(self) -> int:
        return self.unique_steps + self.extra_steps

    def active(self, step: int) -> bool:
        return step < self.guided_steps

    def is_replay(self, step: int) -> bool:
        """fixedflop: steps after the unique data re-read the first ``extra_steps`` batches."""
        return step >= self.unique_steps

    def attach(self, model: Transformer, step: int) -> None:
        """Give every structured layer its guide if guidance is still on at ``step`` (fresh or resumed run)."""
        if self.active(step):
            for layer in model.structured_layers():
                layer.enable_guide()
                if self.cfg.guide_init == "reference":  # a resumed run then loads its guides over this start
                    with torch.no_grad():
                        layer.guide.copy_(reference_guide_start(layer))
                layer.guide_stochastic = self.cfg.reduce_flop

    def alpha(self, step: int) -> float:
        return guide_alpha_at(step, self.guided_steps, self.cfg.schedule)

    def set_step(self, model: Transformer, step: int) -> None:
        a = self.alpha(step)
        for layer in model.structured_layers():
            if layer.guide is not None:
                layer.guide_alpha = a

    @staticmethod
    def guides(model: Transformer) -> list[nn.Parameter]:
        return [layer.guide for layer in model.structured_layers() if layer.guide is not None]

    @staticmethod
    def guide_flops(model: Transformer) -> int:
        """Training FLOPs spent in the guides so far (3 x 2 x in x out per guided token)."""
        return sum(6 * layer.in_features * layer.out_features * layer.guide_tokens
                   for layer in model.structured_layers())

    @staticmethod
    def detach(model: Transformer) -> None:
        for layer in model.structured_layers():
            layer.drop_guide()
