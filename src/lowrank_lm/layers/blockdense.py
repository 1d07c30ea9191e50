"""BlockDense: a block-diagonal matrix down to R, then a dense R -> out matrix."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Factor, StructuredLinear
from .blockdiag import blockdiag_matmul
from .init import normal_, orthonormal_
from .projection import rank_factors
from .structure import MUP_INITS, SettingError, Settings, Structure, check_blocks, check_rank, given


class BlockDenseLinear(StructuredLinear):
    """y = U (V_b x) + b: V_b has B blocks (R/B, in/B), U is (out, R); R (out + in/B) weights."""

    def __init__(self, in_features: int, out_features: int, rank: int, num_blocks: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        self.rank = rank
        self.num_blocks = num_blocks
        self.blocks = nn.Parameter(torch.empty(num_blocks, rank // num_blocks, in_features // num_blocks))
        self.u = nn.Parameter(torch.empty(out_features, rank))

    def matrix_forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """U (blockdiag(x)): the block-diagonal product, then one dense matmul that adds the bias."""
        return F.linear(blockdiag_matmul(x, self.blocks), self.u, bias)

    def num_matrix_params(self) -> int:
        """The blocks' weights plus U's."""
        return self.blocks.numel() + self.u.numel()

    def dense_tail(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the block-diagonal output, U): U is the plain matrix a fused epilogue can run on."""
        return blockdiag_matmul(x, self.blocks), self.u

    @torch.no_grad()
    def from_dense_(self, weight: torch.Tensor) -> None:
        """Block-wise SVD, optimal: U's column block b meets only V's block b, which reads only input block b, so
        W's input column block b is approximated by its own rank-R/B product (independent pieces)."""
        b, rb, in_b = self.blocks.shape
        cols = weight.reshape(weight.shape[0], b, in_b).transpose(0, 1)  # (B, out, in/B)
        u, v = rank_factors(cols, rb)  # (B, out, R/B), (B, R/B, in/B)
        self.blocks.copy_(v)
        self.u.copy_(u.transpose(0, 1).reshape(self.u.shape))

    def factors(self) -> tuple[Factor, ...]:
        """The blocks (per block: in_b -> rank_b), then U (rank -> out)."""
        _, rank_b, in_b = self.blocks.shape
        return Factor("blocks", in_b, rank_b), Factor("u", self.rank, self.out_features)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """The block-diagonal product's output, U's input."""
        return blockdiag_matmul(x, self.blocks)

    def reset_parameters(self, std: float, init: str) -> None:
        fill = normal_ if init == "random" else orthonormal_
        fill(self.blocks, std)
        fill(self.u, std)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, num_blocks={self.num_blocks}"


def _check(f: Settings, h: int, ff: int) -> None:
    check_rank(f, h, ff)
    check_blocks(f, h, ff)
    assert f.rank is not None and f.num_blocks is not None
    if f.rank % f.num_blocks:
        raise SettingError(f"{f.section}.rank={f.rank} is not divisible by num_blocks={f.num_blocks}; "
                           "BlockDense splits the rank across the blocks")


def _candidates(h: int, ff: int, step: int, num_blocks: int | None) -> list[dict[str, int]]:
    assert num_blocks is not None
    unit = math.lcm(step, num_blocks)
    return [{"rank": r, "num_blocks": num_blocks} for r in range(unit, min(h, ff) + 1, unit)]


SPEC = Structure(
    colormap="Greens",
    name="blockdense", summary="a block-diagonal matrix down to R, then a dense R -> out matrix",
    settings=("rank", "num_blocks"), inits=("orthonormal", "random", *MUP_INITS),
    build=lambda n_in, n_out, cfg, bias: BlockDenseLinear(n_in, n_out, given(cfg, "rank"), given(cfg, "num_blocks"),
                                                          bias),
    check=_check, candidates=_candidates, solved=("rank",),
    defaults={"num_blocks": 4})  # the paper's block count at widths 1024 and 2048
