"""The dense baseline, with the same interface as the structured layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Factor, StructuredLinear
from .init import normal_, orthonormal_
from .structure import DENSE, MUP_INITS, Structure


class DenseLinear(StructuredLinear):
    """y = W x + b with W of shape (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def matrix_forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x W^T + bias in one call."""
        return F.linear(x, self.weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # one fused call: nothing to merge or guide

    def merged_weight(self) -> torch.Tensor:
        """The weight itself (detached)."""
        return self.weight.detach()

    def dense_tail(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, W): the whole layer is the plain matrix."""
        return x, self.weight

    def num_matrix_params(self) -> int:
        """in x out."""
        return self.in_features * self.out_features

    @torch.no_grad()
    def from_dense_(self, weight: torch.Tensor) -> None:
        """Copy ``weight`` exactly: a dense layer holds any matrix."""
        self.weight.copy_(weight)

    def factors(self) -> tuple[Factor, ...]:
        """The one weight (in -> out)."""
        return (Factor("weight", self.in_features, self.out_features),)

    def reset_parameters(self, std: float, init: str) -> None:
        (orthonormal_ if init == "orthonormal" else normal_)(self.weight, std)


SPEC = Structure(
    colormap="Blues",
    name=DENSE, summary="a plain (out, in) matrix: the baseline", settings=(),
    inits=("random", "orthonormal", *MUP_INITS),
    build=lambda n_in, n_out, cfg, bias: DenseLinear(n_in, n_out, bias))
