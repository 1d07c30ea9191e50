"""The common shape of every structured linear layer: its matrix product plus a bias.

A subclass only says how its weight matrices act on an input (:meth:`matrix_forward`) and how many
weight parameters it has. This class adds the bias and the dense equivalent (:meth:`merged_weight`).
Techniques that change what a layer computes live outside it and wrap it: pre-merge for inference
(:mod:`lowrank_lm.premerge`) and self-guided training's dense guide (:mod:`lowrank_lm.train.self_guided`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .init import mup_std, normal_


@dataclass(frozen=True)
class Factor:
    """One weight tensor of a layer, as a linear map of its own: what the per-factor muP rules read.

    A block-diagonal factor counts one block: its fan-in and fan-out are a block's input and output widths.
    """

    param: str
    """The layer's parameter attribute that holds it."""
    fan_in: int
    """Inputs each output of the factor sums over (per block)."""
    fan_out: int
    """Outputs each input of the factor feeds (per block)."""


class StructuredLinear(nn.Module):
    """A linear map ``in_features -> out_features`` whose weight may be factored or structured."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

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

    def factors(self) -> tuple[Factor, ...]:
        """The weight factors in input-to-output order, each with its own fan-in and fan-out (per block).

        The ``mup`` and ``zero_out`` inits and ``model.parametrization=mup`` (init scales and learning-rate
        multipliers per factor) read these: a structure gets muP by declaring them.
        """
        raise NotImplementedError(f"{type(self).__name__} declares no factors: muP needs their fan-in and fan-out")

    def inner(self, x: torch.Tensor) -> torch.Tensor | None:
        """The output of the first factor on ``x`` (the next factors' input), or None for a one-factor layer.

        ``lowrank-lm coord-check`` records its RMS beside the layer's output (the last factor's).
        """
        return None

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

    @torch.no_grad()
    def from_dense_(self, weight: torch.Tensor) -> None:
        """Set the weights to the best approximation (Frobenius norm) of the dense (out, in) ``weight`` that this
        structure holds. A structure without a defined projection raises NotImplementedError (the default)."""
        raise NotImplementedError(f"{type(self).__name__} defines no projection of a dense weight")

    # -- shared behaviour --------------------------------------------------------------------
    @torch.no_grad()
    def mup_init_(self, zero_last: bool = False) -> None:
        """Every factor N(0, mup_std(fan_in, fan_out)) in declared order; ``zero_last`` zeroes the last factor
        (the reference's ``zero_init`` of a residual block's output-side layer)."""
        factors = self.factors()
        for i, f in enumerate(factors):
            weight = getattr(self, f.param)
            if zero_last and i == len(factors) - 1:
                weight.zero_()
            else:
                normal_(weight, mup_std(f.fan_in, f.fan_out))

    def flops_per_token(self) -> int:
        """Forward FLOPs per token of the matrix products (2 per multiply-accumulate)."""
        return 2 * self.num_matrix_params()

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The dense (out, in) matrix this layer computes; exact, since there is no non-linearity."""
        p = next(iter(self.parameters()))
        eye = torch.eye(self.in_features, device=p.device, dtype=p.dtype)
        return self.matrix_forward(eye).T.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix_forward(x, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"
