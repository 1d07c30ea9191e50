"""CoLA-style bottleneck: W x ~ U act(V x) with act = SiLU (Liu et al. 2025, "CoLA: Compute-Efficient
Pre-Training of LLMs via Low-Rank Activation").

Like LowRank, V is (R, in) and U is (out, R): (in + out) R weights and as many multiply-accumulates
per token; the SiLU on the R-wide bottleneck is not counted, as the GELU between the FFN's layers is
not (the accounting counts matmuls only). The non-linearity makes the layer no longer a linear map,
so it has no merged dense weight: pre-merge, self-guided training and ``export --merge`` do not apply.

The paper's init (its ``balanced`` here) draws both factors from N(0, sigma^2) with
sigma = (R (in + out))^(-1/4), so that U V has entries of variance 1 / (in + out) whatever R is; it
does not read the model's init_std. ``spectral`` is LowRank's init (U V = best rank-R approximation of
an N(0, init_std) matrix), for comparisons that change only the activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Factor, StructuredLinear
from .init import normal_, spectral_
from .structure import MUP_INITS, Structure, check_rank, given


class CoLALinear(StructuredLinear):
    """y = U silu(V x) + b with V of shape (R, in) and U of shape (out, R); (in + out) R weights."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        self.rank = rank
        self.v = nn.Parameter(torch.empty(rank, in_features))
        self.u = nn.Parameter(torch.empty(out_features, rank))

    def matrix_forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """U silu(V x) + bias."""
        return F.linear(F.silu(F.linear(x, self.v)), self.u, bias)

    def merged_weight(self) -> torch.Tensor:
        """Always raises TypeError: the SiLU between the factors leaves no single matrix."""
        raise TypeError("a CoLA layer is not linear: it has no merged weight (the toolkit checks this before "
                        "pre-merge, self-guided training and export --merge)")

    def num_matrix_params(self) -> int:
        """(in + out) x rank: the weights of V and U."""
        return (self.in_features + self.out_features) * self.rank

    def dense_tail(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(silu(V x), U): U is the plain last matrix."""
        return F.silu(F.linear(x, self.v)), self.u

    def factors(self) -> tuple[Factor, ...]:
        """V (in -> rank), then U (rank -> out)."""
        return Factor("v", self.in_features, self.rank), Factor("u", self.rank, self.out_features)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """V x, before the SiLU."""
        return F.linear(x, self.v)  # before the SiLU: the first factor's own output

    def reset_parameters(self, std: float, init: str) -> None:
        if init == "spectral":
            spectral_(self.u, self.v, std)
            return
        sigma = (self.rank * (self.in_features + self.out_features)) ** -0.25
        normal_(self.u, sigma)
        normal_(self.v, sigma)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, act=silu"


SPEC = Structure(
    colormap="YlOrBr",
    name="cola", summary="U silu(V x): a bottleneck of size R with an activation (CoLA)", settings=("rank",),
    inits=("balanced", "spectral", *MUP_INITS),
    build=lambda n_in, n_out, cfg, bias: CoLALinear(n_in, n_out, given(cfg, "rank"), bias),
    check=check_rank,
    candidates=lambda h, ff, step, blocks: [{"rank": r} for r in range(step, min(h, ff) + 1, step)],
    solved=("rank",), linear=False)
