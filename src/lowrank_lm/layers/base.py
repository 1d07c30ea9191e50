"""The common shape of every FFN linear layer: structured product, bias, pre-merge and self-guidance.

A subclass only says how its weight matrices act on an input (:meth:`matrix_forward`) and how many
weight parameters it has. This class adds the bias, the dense equivalent (:meth:`merged_weight`),
pre-merge for small inputs at inference, and the dense guide of self-guided training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StructuredLinear(nn.Module):
    """A linear map ``in_features -> out_features`` whose weight may be factored or structured."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # Pre-merge (inference): the dense equivalent, used for calls with few tokens.
        self.premerge_max_tokens = 0
        self.register_buffer("merged", None, persistent=False)
        # Self-guided training: a dense guide W and its weight alpha (1 -> 0 over training).
        self.guide: nn.Parameter | None = None
        self.guide_alpha = 0.0
        self.guide_stochastic = True
        # whether this training forward runs the guide, and the tokens that went through it so far (the FLOP
        # report): both kept by train.self_guided before each micro-batch, so a recomputation changes neither
        self.guide_coin = True
        self.guide_tokens = 0

    # -- what a subclass provides ------------------------------------------------------------
    def matrix_forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the weight matrices to ``x`` of shape (..., in_features), then add ``bias`` if given.

        A subclass whose last factor is a plain matrix adds the bias inside that product (one
        ``addmm``), saving a pass over the output, which for an FFN's up layer is 4 x width wide.
        """
        raise NotImplementedError

    def num_matrix_params(self) -> int:
        """Weight parameters (biases excluded); also the multiply-accumulates per token."""
        raise NotImplementedError

    def reset_parameters(self, std: float, init: str) -> None:
        """Initialise the weights (``init`` is spectral, random or orthonormal)."""
        raise NotImplementedError

    def dense_tail(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(h, W) with ``matrix_forward(x) = h W^T`` for a layer whose last factor is a plain matrix, else None.

        The fused bias + GELU paths (:mod:`lowrank_lm.layers.fused`) put their epilogue on that matmul.
        """
        return None

    @torch.no_grad()
    def reference_guide_start(self) -> torch.Tensor:
        """The self-guided guide the reference code (CLAIRE-Labo/StructuredFFN) starts from, as (out, in).

        It multiplies the factors as plain matrices; for most structures that is :meth:`merged_weight`.
        """
        return self.merged_weight()

    # -- shared behaviour --------------------------------------------------------------------
    def flops_per_token(self) -> int:
        """Forward FLOPs per token of the matrix products (2 per multiply-accumulate)."""
        return 2 * self.num_matrix_params()

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The dense (out, in) matrix this layer computes; exact, since there is no non-linearity."""
        p = next(iter(self.parameters()))
        eye = torch.eye(self.in_features, device=p.device, dtype=p.dtype)
        return self.matrix_forward(eye).T.contiguous()

    @torch.no_grad()
    def premerge(self, max_tokens: int) -> None:
        """Keep the merged weight and use it in eval mode for calls with <= ``max_tokens`` tokens."""
        self.premerge_max_tokens = max_tokens
        self.merged = self.merged_weight() if max_tokens > 0 else None

    def unmerge(self) -> None:
        """Drop the pre-merged weight (call after the factors change)."""
        self.premerge(0)

    @torch.no_grad()
    def enable_guide(self) -> None:
        """Create the dense guide W, initialised to the merged structured weight (continuity at t=0)."""
        self.guide = nn.Parameter(self.merged_weight())
        self.guide_alpha = 1.0

    def drop_guide(self) -> None:
        """Remove the guide from compute and from the parameters (after guidance ends)."""
        self.guide = None
        self.guide_alpha = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = x.numel() // self.in_features <= self.premerge_max_tokens
        if self.merged is not None and small and not self.training:
            return F.linear(x, self.merged.to(x.dtype), self.bias)
        y = self.matrix_forward(x, self.bias)
        if self.guide is not None and self.guide_alpha > 0:
            a = self.guide_alpha
            # reduce_flop: the dense path runs only with probability alpha (expected cost 0.5 T_g); the coin is
            # flipped before the model's forward (see train.self_guided), so a recomputation reuses it
            if not self.guide_stochastic or not self.training or self.guide_coin:
                # a (W x + b) + (1 - a) (structured x + b): both paths carry the bias inside their matmul
                y = a * F.linear(x, self.guide, self.bias) + (1.0 - a) * y
        return y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"
