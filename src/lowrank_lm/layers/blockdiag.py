"""Block-diagonal matrix products shared by BlockShuffle and BlockDense.

Two ways to compute them. Under autograd, and on GPUs, one batched matmul over the blocks (one
kernel, a backward for free). In CPU inference, where every pass over the activations costs as
much as a fraction of the matmul, one matmul per block reads its input columns in place and writes
its output columns in place (BLAS takes row strides), so no transposed copy of the input or output
is ever made; BlockShuffle also folds its output un-shuffle into which output columns each block
writes, leaving one copy of the (narrow) inner activations for the shuffle itself.
"""

from __future__ import annotations

import torch


def _inplace_ok(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """CPU inference: no tensor needs a gradient (torch.mm with out= has no backward)."""
    if x.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return False
    return x.dtype == weights[0].dtype


def _blockdiag_bmm(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    num_blocks, out_b, in_b = blocks.shape
    lead = x.shape[:-1]
    xb = x.reshape(-1, num_blocks, in_b).transpose(0, 1)  # (B, T, in_b)
    yb = torch.bmm(xb, blocks.transpose(1, 2))  # (B, T, out_b)
    return yb.transpose(0, 1).reshape(*lead, num_blocks * out_b)


def _blockdiag_columns(x2: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """(T, B*in_b) -> (T, B*out_b), one matmul per block on column slices, nothing copied."""
    num_blocks, out_b, in_b = blocks.shape
    y = x2.new_empty(x2.shape[0], num_blocks * out_b)
    for b in range(num_blocks):
        torch.mm(x2[:, b * in_b:(b + 1) * in_b], blocks[b].T, out=y[:, b * out_b:(b + 1) * out_b])
    return y


def blockdiag_matmul(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Apply a block-diagonal matrix to the last dim of ``x``.

    ``blocks`` has shape (B, out_b, in_b); ``x`` has shape (..., B * in_b); the result (..., B * out_b).
    """
    if not _inplace_ok(x, blocks):
        return _blockdiag_bmm(x, blocks)
    num_blocks, out_b, in_b = blocks.shape
    y = _blockdiag_columns(x.reshape(-1, num_blocks * in_b), blocks)
    return y.view(*x.shape[:-1], num_blocks * out_b)


def shuffle(x: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """The perfect shuffle f: view the last dim as (B, n/B), transpose, flatten (mixes the blocks)."""
    n = x.shape[-1]
    return x.reshape(*x.shape[:-1], num_blocks, n // num_blocks).transpose(-1, -2).reshape(x.shape)


def unshuffle(x: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """The inverse of :func:`shuffle`."""
    n = x.shape[-1]
    return x.reshape(*x.shape[:-1], n // num_blocks, num_blocks).transpose(-1, -2).reshape(x.shape)


def unshuffled_chunks(blocks_out: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
    """How un-shuffle(block-diagonal(z)) splits into plain matmuls writing contiguous output columns.

    Block c of ``blocks_out`` (B, out_b, k) maps z[:, c*k:(c+1)*k] to g_c (out_b wide), and
    un-shuffle sends g_c[o*B + q] to output column q*(n/B) + c*(out_b/B) + o (n = B*out_b). So for
    each (c, q) the weight rows q, q+B, q+2B, ... of block c produce one contiguous run of out_b/B
    output columns. Returns (input block c, first output column, weight rows) for each run; needs
    out_b % B == 0.
    """
    num_blocks, out_b, _ = blocks_out.shape
    n, run = num_blocks * out_b, out_b // num_blocks
    return [(c, q * (n // num_blocks) + c * run, blocks_out[c, q::num_blocks])
            for q in range(num_blocks) for c in range(num_blocks)]


def blockshuffle_matmul(x: torch.Tensor, blocks_in: torch.Tensor, blocks_out: torch.Tensor) -> torch.Tensor:
    """f^-1(U_b f(V_b x)) for ``blocks_in`` V_b (B, inner/B, in/B) and ``blocks_out`` U_b (B, out/B, inner/B)."""
    num_blocks, out_b, k = blocks_out.shape
    if not _inplace_ok(x, blocks_in, blocks_out) or out_b % num_blocks:
        h = shuffle(blockdiag_matmul(x, blocks_in), num_blocks)
        return unshuffle(blockdiag_matmul(h, blocks_out), num_blocks)
    x2 = x.reshape(-1, x.shape[-1])
    z = shuffle(_blockdiag_columns(x2, blocks_in), num_blocks)  # the one copy: inner (narrow) activations
    y = x2.new_empty(x2.shape[0], num_blocks * out_b)
    run = out_b // num_blocks
    for c, start, rows in unshuffled_chunks(blocks_out):
        torch.mm(z[:, c * k:(c + 1) * k], rows.T, out=y[:, start:start + run])
    return y.view(*x.shape[:-1], num_blocks * out_b)
