"""Block Tensor-Train (BTT) with two cores and BTT rank r (Qiu et al. 2024, "Compute Better Spent").

The input width factors as in = m0 x m1 and the output width as out = n0 x n1, each split as the authors'
code splits it (``factorize(n, 2)`` in compute-better-spent nn/cola_nn.py, see :func:`factor_pair`): the
prime factors, smallest first, each multiplied into the smaller of the two numbers so far; the pair sorted.
So 192 = 8 x 24 and 768 = 16 x 48, not the most balanced 12 x 16 and 24 x 32. An input x is read as an
(m1, m0) grid: its index is a m0 + b. The two cores are

    core_in  (m1 blocks of (r n0) x m0):  z[a, c, s] = sum_b core_in[a, c r + s, b] x[a, b]
    core_out (n0 blocks of n1 x (m1 r)):  y[c, d]    = sum_(a, s) core_out[c, d, a r + s] z[a, c, s]

and the output index is c n1 + d (the reference's cores are these transposed: (m1, m0, n0 r) and
(n0, m1 r, n1)). So the layer is block-diagonal, a transpose of the (m1, n0) grid (with the r channels carried
along), block-diagonal again: r (in n0 + m1 out) weights and as many multiply-accumulates per token.

At r = 1 it is BlockShuffle with B blocks up to a fixed permutation of the outputs (BTT leaves out
BlockShuffle's final un-shuffle) exactly when m1 = n0 = B and min(in, out) = B^2: then the two cores have
the shapes of BlockShuffle's two block-diagonals and the transpose is its shuffle (e.g. 16 -> 16 and
16 -> 32 with B = 4). Otherwise no block count gives BlockShuffle factors of the cores' shapes: at
64 -> 256 the cores hold 8 blocks of 16 x 8 and 16 blocks of 16 x 8 (3072 weights), BlockShuffle with 8
blocks 8 of 8 x 8 and 8 of 32 x 8 (2560).

Inits: ``mup`` (the default, the authors' ``cola_init``): each core Gaussian with std sqrt(1 / fan_in) x
min(1, sqrt(fan_out / fan_in)), core_in's fan-in m0 and fan-out r n0, core_out's r m1 and n1; ``zero_out``
also zeroes core_out of the layers that end a residual branch (the authors' ``zero_init``); ``orthonormal``.
None reads the model's init_std. The authors' RMS-capped variant (``btt_norm``) is not offered: see
docs/mup.md.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Factor, StructuredLinear
from .blockdiag import blockdiag_matmul
from .init import orthonormal_
from .projection import rank_factors
from .structure import SettingError, Settings, Structure, given


def factor_pair(n: int) -> tuple[int, int] | None:
    """(p, q) with p q = n and p <= q, split as the BTT authors' ``factorize(n, 2)`` splits it; None when p = 1.

    Each prime factor of n, smallest first, multiplies the smaller of the two numbers so far (the first on a
    tie): 192 = 2^6 x 3 gives (8, 8), then (8, 24).
    """
    pair, rest, p = [1, 1], n, 2
    while rest > 1 and p * p <= rest:
        while rest % p == 0:
            pair[0 if pair[0] <= pair[1] else 1] *= p
            rest //= p
        p += 1
    if rest > 1:  # the largest prime factor, left over
        pair[0 if pair[0] <= pair[1] else 1] *= rest
    low, high = sorted(pair)
    return (low, high) if low >= 2 else None


class BTTLinear(StructuredLinear):
    """Two-core Block Tensor-Train of rank r: core_in (m1, r n0, m0), core_out (n0, n1, m1 r)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        factors_in, factors_out = factor_pair(in_features), factor_pair(out_features)
        if factors_in is None or factors_out is None:
            raise ValueError(f"BTT needs widths with a factor pair >= 2, got {in_features} -> {out_features}")
        self.rank = rank
        (m0, m1), (n0, n1) = factors_in, factors_out
        self.in_factors, self.out_factors = (m0, m1), (n0, n1)
        self.core_in = nn.Parameter(torch.empty(m1, rank * n0, m0))
        self.core_out = nn.Parameter(torch.empty(n0, n1, m1 * rank))

    def matrix_forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """core_in's block-diagonal product, the one (a, c, s) -> (c, a, s) copy, core_out's product, then
        the bias."""
        (_, m1), (n0, _) = self.in_factors, self.out_factors
        z = blockdiag_matmul(x, self.core_in)  # (..., m1 * n0 * r), index (a, c, s)
        # the one copy: (a, c, s) -> (c, a, s), so that each output block reads contiguous columns
        z = z.unflatten(-1, (m1, n0, self.rank)).transpose(-3, -2).flatten(-3)
        y = blockdiag_matmul(z, self.core_out)  # (..., n0 * n1), index (c, d)
        # Ends in a block-diagonal product: no single matmul to carry the bias. Cast it as F.linear would.
        return y if bias is None else y + bias.to(y.dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The dense (out, in) matrix, contracted from the two cores with one einsum."""
        (m0, m1), (n0, n1), r = self.in_factors, self.out_factors, self.rank
        w_in = self.core_in.view(m1, n0, r, m0)  # [a, c, s, b]
        w_out = self.core_out.view(n0, n1, m1, r)  # [c, d, a, s]
        return torch.einsum("cdas,acsb->cdab", w_out, w_in).reshape(self.out_features, self.in_features)

    def num_matrix_params(self) -> int:
        """The weights of both cores."""
        return self.core_in.numel() + self.core_out.numel()

    @torch.no_grad()
    def from_dense_(self, weight: torch.Tensor) -> None:
        """Optimal: W's (output block c, input block a) sub-block (n1 x m0) is core_out[c, :, a r:(a+1) r] times
        core_in[a, c r:(c+1) r, :], and no two sub-blocks share weights, so each is its own rank-r truncated SVD."""
        (m0, m1), (n0, n1), r = self.in_factors, self.out_factors, self.rank
        pieces = weight.reshape(n0, n1, m1, m0).permute(0, 2, 1, 3)  # [c, a, d, b]
        u, v = rank_factors(pieces, r)  # (n0, m1, n1, r), (n0, m1, r, m0)
        self.core_out.copy_(u.permute(0, 2, 1, 3).reshape(self.core_out.shape))  # [c, d, a, s]
        self.core_in.copy_(v.permute(1, 0, 2, 3).reshape(self.core_in.shape))  # [a, c, s, b]

    def factors(self) -> tuple[Factor, ...]:
        """core_in (per block: m0 -> r n0), then core_out (m1 r -> n1)."""
        (m0, m1), (n0, n1), r = self.in_factors, self.out_factors, self.rank
        return Factor("core_in", m0, r * n0), Factor("core_out", m1 * r, n1)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """core_in's output, before the transpose that core_out reads."""
        return blockdiag_matmul(x, self.core_in)

    def reset_parameters(self, std: float, init: str) -> None:
        if init == "orthonormal":
            orthonormal_(self.core_in, std)
            orthonormal_(self.core_out, std)
        else:  # mup, or zero_out on a layer that ends a residual branch (the registry decides which)
            self.mup_init_(zero_last=init == "zero_out")

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", rank={self.rank}, in={self.in_factors[0]}x{self.in_factors[1]}, "
                f"out={self.out_factors[0]}x{self.out_factors[1]}")


def btt_params(n_in: int, n_out: int, rank: int) -> int:
    """Weights of a BTT layer n_in -> n_out: r (n_in n0 + m1 n_out)."""
    (_, m1), (n0, _) = factor_pair(n_in), factor_pair(n_out)  # type: ignore[misc]
    return rank * (n_in * n0 + m1 * n_out)


def _factored(h: int, ff: int) -> None:
    for dim, name in ((h, "hidden_dim"), (ff, "ffn_dim")):
        if factor_pair(dim) is None:
            raise SettingError(f"model.{name}={dim} has no factor pair >= 2 for the Block Tensor-Train's two cores; "
                               "use a width with a divisor (e.g. a multiple of 16) or another structure")


def _max_rank(h: int, ff: int) -> int:
    """The largest rank whose up and down layers both keep fewer weights than dense ones."""
    per_rank = max(btt_params(h, ff, 1), btt_params(ff, h, 1))
    return (h * ff - 1) // per_rank


def _check(f: Settings, h: int, ff: int) -> None:
    _factored(h, ff)
    if f.rank is None:
        raise SettingError(f"{f.section}.rank (the BTT rank) is required for kind {f.kind}; set e.g. "
                           f"{f.section}.rank=2, or {f.section}.fraction=0.32 to solve it")
    if f.rank > _max_rank(h, ff):
        raise SettingError(f"{f.section}.rank={f.rank} gives {f.kind} layers at least as large as dense ones at "
                           f"widths {h} / {ff}; use a rank of at most {_max_rank(h, ff)}")


def _candidates(h: int, ff: int, step: int, num_blocks: int | None) -> list[dict[str, int]]:
    _factored(h, ff)
    return [{"rank": r} for r in range(1, _max_rank(h, ff) + 1)]  # BTT ranks are small: every one is tried


SPEC = Structure(
    colormap="Reds",
    name="btt", summary="Block Tensor-Train: two cores of BTT rank R (R = 1: Monarch-like)", settings=("rank",),
    inits=("mup", "orthonormal", "zero_out"),
    build=lambda n_in, n_out, cfg, bias: BTTLinear(n_in, n_out, given(cfg, "rank"), bias),
    check=_check, candidates=_candidates, solved=("rank",))
