"""Self-guided training: a dense guide W beside each structured layer, weighted by alpha decaying 1 -> 0.

o = alpha W x + (1 - alpha) U(V x). W starts as the merged structured weight so the output is continuous
(``guide_init: reference`` starts BlockShuffle's W as the reference code does, see :func:`reference_guide_start`);
after ``ratio x steps`` steps the guides leave the model and the optimiser and cost nothing. In fixedflop mode
the guided steps are appended again at the end, re-reading the first batches, so that the total FLOPs
match the dense model's (reference section 3.3).

With ``reduce_flop`` the dense path of each structured layer runs with probability alpha: one coin per layer
and micro-batch, drawn before the model's forward from a generator seeded by (seed, rank, step). Each rank
thus flips its own coins (independent across ranks, as independent micro-batches of one process would be),
a resumed run flips the same coins as an uninterrupted one, and activation checkpointing's recomputation
reuses the coin of its forward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lowrank_lm.config import SelfGuidedConfig
from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.model import Transformer
from lowrank_lm.train.schedule import guide_alpha_at


@torch.no_grad()
def reference_guide_start(layer: StructuredLinear) -> torch.Tensor:
    """The guide the reference code (CLAIRE-Labo/StructuredFFN) starts from, as an (out, in) matrix.

    It multiplies the layer's factors as plain matrices. For LowRank and BlockDense that is the layer's own
    matrix; for BlockShuffle it is block_diag(second factor) x block_diag(first factor), which leaves out the
    shuffle between them, so the guide starts block-diagonal instead of at the layer's matrix.
    """
    return layer.reference_guide_start()  # each structure module says what its factors multiply to


class SelfGuidance:
    """Drives the guides of a model over a run of ``steps`` (unique-data) steps."""

    def __init__(self, cfg: SelfGuidedConfig, steps: int, seed: int = 0, rank: int = 0) -> None:
        self.cfg = cfg
        self.guided_steps = int(cfg.ratio * steps) if cfg.enabled else 0
        self.extra_steps = self.guided_steps if cfg.enabled and cfg.mode == "fixedflop" else 0
        self.unique_steps = steps
        self.seed, self.rank = seed, rank
        self._coins = torch.Generator()
        self._hook = None

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
            self._hook = model.register_forward_pre_hook(self._before_forward)

    def alpha(self, step: int) -> float:
        return guide_alpha_at(step, self.guided_steps, self.cfg.schedule)

    def set_step(self, model: Transformer, step: int) -> None:
        a = self.alpha(step)
        for layer in model.structured_layers():
            if layer.guide is not None:
                layer.guide_alpha = a
        self._coins.manual_seed(coin_seed(self.seed, self.rank, step))

    def _before_forward(self, model: Transformer, args: tuple) -> None:
        """Before each training forward (one micro-batch): does each layer's dense path run this time? Count
        the tokens that go through it here, once, rather than in the layer, whose forward may be recomputed."""
        if not model.training:
            return
        tokens = args[0].numel()
        for layer in model.structured_layers():
            if layer.guide is not None and layer.guide_alpha > 0:
                if layer.guide_stochastic:
                    layer.guide_coin = float(torch.rand((), generator=self._coins)) < layer.guide_alpha
                if layer.guide_coin:  # always True without reduce_flop
                    layer.guide_tokens += tokens

    @staticmethod
    def guides(model: Transformer) -> list[nn.Parameter]:
        return [layer.guide for layer in model.structured_layers() if layer.guide is not None]

    @staticmethod
    def guide_flops(model: Transformer, tokens: list[int] | None = None) -> int:
        """Training FLOPs spent in the guides (3 x 2 x in x out per guided token): of this process, or of
        ``tokens`` guided tokens per structured layer (e.g. summed over all ranks)."""
        layers = list(model.structured_layers())
        counts = tokens if tokens is not None else [layer.guide_tokens for layer in layers]
        return sum(6 * layer.in_features * layer.out_features * n for layer, n in zip(layers, counts, strict=True))

    def detach(self, model: Transformer) -> None:
        """Guidance over: the guides leave every layer and the coins stop."""
        for layer in model.structured_layers():
            layer.drop_guide()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def coin_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank's guide coins at one step: independent streams for every (seed, rank, step)."""
    return int(np.random.SeedSequence([seed & 0xFFFF_FFFF, rank, step]).generate_state(1, np.uint64)[0] >> 1)
