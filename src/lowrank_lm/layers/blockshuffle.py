"""BlockShuffle (Monarch-like): y = f^-1(U_b f(V_b x)) with two block-diagonal matrices."""

from __future__ import annotations

import torch
from torch import nn

from .base import Factor, StructuredLinear
from .blockdiag import blockdiag_matmul, blockshuffle_matmul, shuffle, unshuffle
from .init import normal_, orthonormal_
from .projection import rank_factors
from .structure import MUP_INITS, Structure, check_blocks, given


class BlockShuffleLinear(StructuredLinear):
    """Two block-diagonal matrices of B blocks around a shuffle; min(in,out)(in+out)/B weights.

    The inner width is min(in, out): V_b has blocks (inner/B, in/B), U_b has blocks (out/B, inner/B).
    """

    def __init__(self, in_features: int, out_features: int, num_blocks: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        self.num_blocks = num_blocks
        inner = min(in_features, out_features)
        b = num_blocks
        self.blocks_in = nn.Parameter(torch.empty(b, inner // b, in_features // b))
        self.blocks_out = nn.Parameter(torch.empty(b, out_features // b, inner // b))

    def matrix_forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Two block-diagonal products with a shuffle between; the bias is added after the last
        (there is no final matmul to carry it)."""
        y = blockshuffle_matmul(x, self.blocks_in, self.blocks_out)
        # Ends in a permutation: no matmul to carry the bias. Cast it, so autocast's dtype holds as in F.linear.
        return y if bias is None else y + bias.to(y.dtype)

    def num_matrix_params(self) -> int:
        """The weights of both block-diagonal factors."""
        return self.blocks_in.numel() + self.blocks_out.numel()

    def factors(self) -> tuple[Factor, ...]:
        """blocks_in (per block: in_b -> inner_b), then blocks_out (inner_b -> out_b)."""
        (_, inner_b, in_b), (_, out_b, _) = self.blocks_in.shape, self.blocks_out.shape
        return Factor("blocks_in", in_b, inner_b), Factor("blocks_out", inner_b, out_b)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """The first block-diagonal product's output, before the shuffle."""
        return blockdiag_matmul(x, self.blocks_in)

    def reset_parameters(self, std: float, init: str) -> None:
        fill = normal_ if init == "random" else orthonormal_
        fill(self.blocks_in, std)
        fill(self.blocks_out, std)

    @torch.no_grad()
    def from_dense_(self, weight: torch.Tensor) -> None:
        """The Monarch projection, optimal: each pair (output group c, input block b) is joined only through the
        inner channels that the shuffle carries from V's block b to U's block c, and no other pair uses those
        weights, so W's (c, b) sub-block is approximated by its own truncated SVD at that many channels."""
        nb, k_b, in_b = self.blocks_in.shape
        out_b = self.blocks_out.shape[1]
        h_at = shuffle(torch.arange(nb * k_b), nb)  # the inner (V-side) index at each U-side position
        g_at = unshuffle(torch.arange(self.out_features), nb)  # U's output index (c out_b + o) at each output
        for c in range(nb):
            rows = torch.nonzero(g_at // out_b == c).flatten()  # the outputs U's block c writes
            o = g_at[rows] % out_b
            h = h_at[c * k_b:(c + 1) * k_b]
            for b in range(nb):
                cols = torch.nonzero(h // k_b == b).flatten()  # U block c's columns fed by V's block b
                if len(cols):
                    piece = weight[rows][:, b * in_b:(b + 1) * in_b]
                    u, v = rank_factors(piece, len(cols))
                    self.blocks_out[c][o[:, None], cols[None, :]] = u
                    self.blocks_in[b][h[cols] % k_b] = v

    @torch.no_grad()
    def reference_guide_start(self) -> torch.Tensor:
        """block_diag(second factor) x block_diag(first factor): the reference code leaves out the shuffle
        between them, so its guide starts block-diagonal instead of at this layer's matrix."""
        return torch.block_diag(*self.blocks_out) @ torch.block_diag(*self.blocks_in)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_blocks={self.num_blocks}"


def _candidates(h: int, ff: int, step: int, num_blocks: int | None) -> list[dict[str, int]]:
    inner = min(h, ff)
    return [{"num_blocks": b} for b in range(2, inner + 1) if h % b == 0 and ff % b == 0 and inner % b == 0]


SPEC = Structure(
    colormap="Purples",
    name="blockshuffle", summary="two block-diagonal matrices around a shuffle (Monarch-like)",
    settings=("num_blocks",), inits=("orthonormal", "random", *MUP_INITS),
    build=lambda n_in, n_out, cfg, bias: BlockShuffleLinear(n_in, n_out, given(cfg, "num_blocks"), bias),
    check=check_blocks, candidates=_candidates, solved=("num_blocks",))
