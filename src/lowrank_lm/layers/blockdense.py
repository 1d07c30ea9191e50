"""BlockDense: a block-diagonal matrix down to R, then a dense R -> out matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.layers.blockdiag import blockdiag_matmul
from lowrank_lm.layers.init import normal_, orthonormal_


class BlockDenseLinear(StructuredLinear):
    """y = U (V_b x) + b: V_b has B blocks (R/B, in/B), U is (out, R); R (out + in/B) weights."""

    def __init__(self, in_features: int, out_features: int, rank: int, num_blocks: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        self.rank = rank
        self.num_blocks = num_blocks
        self.blocks = nn.Parameter(torch.empty(num_blocks, rank // num_blocks, in_features // num_blocks))
        self.u = nn.Parameter(torch.empty(out_features, rank))

    def matrix_forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(blockdiag_matmul(x, self.blocks), self.u, bias)

    def num_matrix_params(self) -> int:
        return self.blocks.numel() + self.u.numel()

    def reset_parameters(self, std: float, init: str) -> None:
        fill = normal_ if init == "random" else orthonormal_
        fill(self.blocks, std)
        fill(self.u, std)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, num_blocks={self.num_blocks}"
