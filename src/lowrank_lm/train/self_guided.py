"""Self-guided training: a dense guide W beside each structured layer, weighted by alpha decaying 1 -> 0.

o = alpha (W x + b) + (1 - alpha) (U(V x) + b). W starts as the merged structured weight so the output is
continuous (``guide_init: reference`` starts BlockShuffle's W as the reference code does, see
:func:`reference_guide_start`); after ``ratio x steps`` steps the guides leave the model and the optimiser and
cost nothing. In fixedflop mode the guided steps are appended again at the end, re-reading the first batches,
so that the total FLOPs match the dense model's (reference section 3.3).

The technique wraps the layer from outside: :func:`attach_guide` registers the guide as the layer's parameter
``guide`` (so checkpoints hold ``<layer>.guide``, as they always have), alpha and the coin as non-persistent
buffers, and a forward hook that mixes the guide's output into the layer's; :func:`detach_guide` removes all
of it. The layer's own forward stays its matrix product.

With ``reduce_flop`` the dense path of each structured layer runs with probability alpha: one coin per layer
and micro-batch, drawn before the model's forward from a generator seeded by (seed, rank, step). Each rank
thus flips its own coins (independent across ranks, as independent micro-batches of one process would be),
a resumed run flips the same coins as an uninterrupted one, and activation checkpointing's recomputation
reuses the coin of its forward. Eagerly the hook branches on the coin in Python; under torch.compile it
branches with ``torch.cond`` on the coin as a 0-dim bool tensor, so one graph serves every coin (a Python
branch would recompile for each pattern of coins). The skipped branch of ``torch.cond`` still gives the guide
a gradient, of zeros; :meth:`SelfGuidance.clear_skipped_grads` sets it back to None, as an eager skip leaves
it, so AdamW skips that guide (no weight decay, no moment update), as the reference code does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

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


GUIDE = "guide"
"""The guide's parameter name on its layer: checkpoint keys are ``<layer>.guide``."""


def _mix(x: torch.Tensor, y: torch.Tensor, guide: torch.Tensor, bias: torch.Tensor | None,
         alpha: torch.Tensor) -> torch.Tensor:
    """a (W x + b) + (1 - a) y, with y = structured x + b: both paths carry the bias inside their matmul."""
    return alpha * F.linear(x, guide, bias) + (1 - alpha) * y


def _structured_only(x: torch.Tensor, y: torch.Tensor, guide: torch.Tensor, bias: torch.Tensor | None,
                     alpha: torch.Tensor) -> torch.Tensor:
    return y.clone()  # torch.cond's branches may not return an input as it is


class GuideHook:
    """The forward hook of one guided layer; ``coin`` is its host-side copy of the layer's coin."""

    def __init__(self, stochastic: bool) -> None:
        self.stochastic = stochastic
        self.handle: RemovableHandle | None = None
        self.alpha = 1.0
        self.coin = True
        self.used = False  # whether the guide ran in a micro-batch of the current step

    def __call__(self, layer: StructuredLinear, args: tuple, y: torch.Tensor) -> torch.Tensor:
        x, guide, bias, alpha = args[0], layer.guide, layer.bias, layer.guide_alpha
        if not (self.stochastic and layer.training):
            return _mix(x, y, guide, bias, alpha)
        if torch.compiler.is_compiling():  # one graph for both outcomes: the coin is a tensor here
            return torch.cond(layer.guide_coin, _mix, _structured_only, (x, y, guide, bias, alpha))
        return _mix(x, y, guide, bias, alpha) if self.coin else y

    def set_alpha(self, layer: StructuredLinear, alpha: float) -> None:
        """The guide's weight from now on (kept on the host too, for the coin's probability)."""
        self.alpha = alpha
        layer.guide_alpha.fill_(alpha)

    def set_coin(self, layer: StructuredLinear, coin: bool) -> None:
        """Whether the guide runs in the next training forwards (reduce_flop), on the host and as a tensor."""
        self.coin = coin
        layer.guide_coin.fill_(coin)


@torch.no_grad()
def attach_guide(layer: StructuredLinear, stochastic: bool, start: torch.Tensor | None = None) -> GuideHook:
    """Give ``layer`` a dense guide W (``start``, by default the layer's merged weight: continuity at alpha = 1)
    with alpha = 1; with ``stochastic`` (reduce_flop) the guide runs in a training forward only when the
    layer's coin (set by :meth:`GuideHook.set_coin`) is up."""
    like = layer.bias if layer.bias is not None else next(iter(layer.parameters()))  # the layer's device, dtype
    weight = layer.merged_weight() if start is None else start.to(like.device, like.dtype)
    layer.register_parameter(GUIDE, nn.Parameter(weight.contiguous()))
    layer.register_buffer("guide_alpha", torch.ones((), device=like.device), persistent=False)
    layer.register_buffer("guide_coin", torch.ones((), dtype=torch.bool, device=like.device), persistent=False)
    hook = GuideHook(stochastic)
    hook.handle = layer.register_forward_hook(hook)
    return hook


def detach_guide(layer: StructuredLinear, hook: GuideHook) -> None:
    """Remove the guide from ``layer``'s compute and parameters (after guidance ends)."""
    if hook.handle is not None:
        hook.handle.remove()
    for name in (GUIDE, "guide_alpha", "guide_coin"):
        delattr(layer, name)


class SelfGuidance:
    """Drives the guides of a model over a run of ``steps`` (unique-data) steps."""

    def __init__(self, cfg: SelfGuidedConfig, steps: int, seed: int = 0, rank: int = 0) -> None:
        self.cfg = cfg
        self.guided_steps = int(cfg.ratio * steps) if cfg.enabled else 0
        self.extra_steps = self.guided_steps if cfg.enabled and cfg.mode == "fixedflop" else 0
        self.unique_steps = steps
        self.seed, self.rank = seed, rank
        self._coins = torch.Generator()
        self._hook: RemovableHandle | None = None
        self._guides: list[tuple[StructuredLinear, GuideHook]] = []
        self._tokens: list[int] = []  # guided tokens per structured layer, kept after the guides leave

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
        layers = list(model.structured_layers())
        self._tokens = [0] * len(layers)
        if self.active(step):
            for layer in layers:
                # a resumed run then loads its guides over this start
                start = reference_guide_start(layer) if self.cfg.guide_init == "reference" else None
                self._guides.append((layer, attach_guide(layer, self.cfg.reduce_flop, start)))
            self._hook = model.register_forward_pre_hook(self._before_forward)

    def alpha(self, step: int) -> float:
        return guide_alpha_at(step, self.guided_steps, self.cfg.schedule)

    def set_step(self, model: Transformer, step: int) -> None:
        alpha = self.alpha(step)
        for layer, hook in self._guides:
            hook.set_alpha(layer, alpha)
            hook.used = False
        self._coins.manual_seed(coin_seed(self.seed, self.rank, step))

    @torch.compiler.disable  # host-side bookkeeping: a compiled model calls it eagerly, once per forward
    def _before_forward(self, model: Transformer, args: tuple) -> None:
        """Before each training forward (one micro-batch): does each layer's dense path run this time? Count
        the tokens that go through it here, once, rather than in the layer, whose forward may be recomputed."""
        if not model.training:
            return
        tokens = args[0].numel()
        for index, (layer, hook) in enumerate(self._guides):
            if hook.alpha > 0:
                if hook.stochastic:
                    hook.set_coin(layer, float(torch.rand((), generator=self._coins)) < hook.alpha)
                if hook.coin:  # always True without reduce_flop
                    hook.used = True
                    self._tokens[index] += tokens

    @torch.no_grad()
    def clear_skipped_grads(self, used_anywhere: Callable[[list[int]], list[int]] | None = None) -> None:
        """After a step's backward: a guide that sat out every micro-batch gets no gradient (None, as an eager
        skip leaves it), so AdamW leaves it alone. Needed under torch.compile, whose ``torch.cond`` gives the
        skipped branch a gradient of zeros. ``used_anywhere`` sums the use flags over ranks (DDP), since a
        guide used on one rank has the averaged gradient on all."""
        used = [int(hook.used) for _, hook in self._guides]
        if used_anywhere is not None:
            used = used_anywhere(used)
        for (layer, _), ranks_using in zip(self._guides, used, strict=True):
            if not ranks_using:
                layer.guide.grad = None

    @property
    def guided(self) -> list[tuple[StructuredLinear, GuideHook]]:
        """Each guided layer with its hook (empty before :meth:`attach` and after :meth:`detach`)."""
        return list(self._guides)

    def guided_tokens(self) -> list[int]:
        """Tokens that went through each structured layer's guide in this process so far."""
        return list(self._tokens)

    @staticmethod
    def guides(model: Transformer) -> list[nn.Parameter]:
        return [getattr(layer, GUIDE) for layer in model.structured_layers() if hasattr(layer, GUIDE)]

    @staticmethod
    def guide_flops(model: Transformer, tokens: list[int]) -> int:
        """Training FLOPs spent in the guides for ``tokens`` guided tokens per structured layer (3 x 2 x in x out
        per guided token), e.g. :meth:`guided_tokens` or those summed over all ranks."""
        layers = list(model.structured_layers())
        return sum(6 * layer.in_features * layer.out_features * count
                   for layer, count in zip(layers, tokens, strict=True))

    def detach(self, model: Transformer) -> None:
        """Guidance over: the guides leave every layer and the coins stop."""
        for layer, hook in self._guides:
            detach_guide(layer, hook)
        self._guides = []
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def coin_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank's guide coins at one step: independent streams for every (seed, rank, step)."""
    return int(np.random.SeedSequence([seed & 0xFFFF_FFFF, rank, step]).generate_state(1, np.uint64)[0] >> 1)
