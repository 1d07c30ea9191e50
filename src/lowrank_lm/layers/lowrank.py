"""LowRank: W x ~ U (V x) with a bottleneck of size R."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Factor, StructuredLinear
from .init import normal_, orthonormal_, spectral_
from .projection import rank_factors
from .structure import MUP_INITS, Structure, check_rank, given


class LowRankLinear(StructuredLinear):
    """y = U (V x) + b with V of shape (R, in) and U of shape (out, R); (in + out) R weights."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        self.rank = rank
        self.v = nn.Parameter(torch.empty(rank, in_features))
        self.u = nn.Parameter(torch.empty(out_features, rank))

    def matrix_forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """U (V x) + bias: two matmuls, the bias added in the second."""
        return F.linear(F.linear(x, self.v), self.u, bias)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """U V, the dense (out, in) matrix of rank at most ``rank``."""
        return self.u @ self.v

    def num_matrix_params(self) -> int:
        """(in + out) x rank: the weights of V and U."""
        return (self.in_features + self.out_features) * self.rank

    def dense_tail(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V x, U): U is the plain last matrix."""
        return F.linear(x, self.v), self.u

    @torch.no_grad()
    def from_dense_(self, weight: torch.Tensor) -> None:
        """Truncated SVD: U V is the best rank-R approximation of ``weight`` (Eckart–Young)."""
        u, v = rank_factors(weight, self.rank)
        self.u.copy_(u)
        self.v.copy_(v)

    def factors(self) -> tuple[Factor, ...]:
        """V (in -> rank), then U (rank -> out)."""
        return Factor("v", self.in_features, self.rank), Factor("u", self.rank, self.out_features)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """V x, the rank-sized bottleneck."""
        return F.linear(x, self.v)

    def reset_parameters(self, std: float, init: str) -> None:
        if init == "spectral":
            spectral_(self.u, self.v, std)
        elif init == "orthonormal":
            orthonormal_(self.u, std)
            orthonormal_(self.v, std)
        else:
            normal_(self.u, std)
            normal_(self.v, std)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}"


SPEC = Structure(
    colormap="Oranges",
    name="lowrank", summary="U (V x) with a bottleneck of size R", settings=("rank",),
    inits=("spectral", "orthonormal", "random", *MUP_INITS),
    build=lambda n_in, n_out, cfg, bias: LowRankLinear(n_in, n_out, given(cfg, "rank"), bias),
    check=check_rank,
    candidates=lambda h, ff, step, blocks: [{"rank": r} for r in range(step, min(h, ff) + 1, step)],
    solved=("rank",))
