"""Block-diagonal matrix products shared by BlockShuffle and BlockDense."""

from __future__ import annotations

import torch


def blockdiag_matmul(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Apply a block-diagonal matrix to the last dim of ``x``.

    ``blocks`` has shape (B, out_b, in_b); ``x`` has shape (..., B * in_b); the result (..., B * out_b).
    """
    num_blocks, out_b, in_b = blocks.shape
    lead = x.shape[:-1]
    xb = x.reshape(-1, num_blocks, in_b).transpose(0, 1)  # (B, T, in_b)
    yb = torch.bmm(xb, blocks.transpose(1, 2))  # (B, T, out_b)
    return yb.transpose(0, 1).reshape(*lead, num_blocks * out_b)


def shuffle(x: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """The perfect shuffle f: view the last dim as (B, n/B), transpose, flatten (mixes the blocks)."""
    n = x.shape[-1]
    return x.reshape(*x.shape[:-1], num_blocks, n // num_blocks).transpose(-1, -2).reshape(x.shape)


def unshuffle(x: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """The inverse of :func:`shuffle`."""
    n = x.shape[-1]
    return x.reshape(*x.shape[:-1], n // num_blocks, num_blocks).transpose(-1, -2).reshape(x.shape)
