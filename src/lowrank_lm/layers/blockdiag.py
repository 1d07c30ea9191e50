"""Block-diagonal matrix products shared by BlockShuffle and BlockDense.

On GPUs, one batched matmul over the blocks (one kernel). On CPUs, where every pass over the
activations costs a noticeable fraction of the matmuls, one matmul per block reads its input
columns in place and writes its output columns in place (BLAS takes row strides), so no transposed
copy of the input or output is made, forward or backward. BlockShuffle also folds its output
un-shuffle into which output columns each block writes, leaving one copy of the (narrow) inner
activations for the shuffle itself. The CPU kernels have their own backward and follow autocast
like the matmuls they replace.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def _blockdiag_bmm(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    num_blocks, out_b, in_b = blocks.shape
    lead = x.shape[:-1]
    xb = x.reshape(-1, num_blocks, in_b).transpose(0, 1)  # (B, T, in_b)
    yb = torch.bmm(xb, blocks.transpose(1, 2))  # (B, T, out_b)
    return yb.transpose(0, 1).reshape(*lead, num_blocks * out_b)


def _cpu_operands(x: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """The operands in the dtype the matmul would run in (autocast's, if on); None if not a CPU case."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return None  # GPUs: one batched kernel; torch.compile: inductor plans the layout itself
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")  # what autocast would give torch.mm
        return tuple(t.to(dtype) for t in (x, *weights))
    if any(w.dtype != x.dtype for w in weights):
        return None  # let the batched path raise torch's usual dtype error
    return (x, *weights)


def _no_autocast() -> AbstractContextManager:
    # out= matmuls are not autocast-eligible; the operands are already cast.
    return torch.autocast("cpu", enabled=False) if torch.is_autocast_enabled("cpu") else nullcontext()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A view whose last dim is unit-stride (BLAS needs one); copies only in the rare other case."""
    return t if t.stride(-1) == 1 else t.contiguous()


class _BlockDiagColumns(torch.autograd.Function):
    """(T, B*in_b) @ blockdiag(blocks)^T with one matmul per block on column slices."""

    @staticmethod
    def forward(ctx, x2: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        num_blocks, out_b, in_b = blocks.shape
        y = x2.new_empty(x2.shape[0], num_blocks * out_b)
        for b in range(num_blocks):
            torch.mm(x2[:, b * in_b:(b + 1) * in_b], blocks[b].T, out=y[:, b * out_b:(b + 1) * out_b])
        ctx.save_for_backward(x2, blocks)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        x2, blocks = ctx.saved_tensors
        num_blocks, out_b, in_b = blocks.shape
        gy = _rows(gy)
        gx = gblocks = None
        if ctx.needs_input_grad[0]:
            gx = x2.new_empty(x2.shape)
            for b in range(num_blocks):
                torch.mm(gy[:, b * out_b:(b + 1) * out_b], blocks[b], out=gx[:, b * in_b:(b + 1) * in_b])
        if ctx.needs_input_grad[1]:
            gblocks = torch.empty_like(blocks)
            for b in range(num_blocks):
                torch.mm(gy[:, b * out_b:(b + 1) * out_b].T, x2[:, b * in_b:(b + 1) * in_b], out=gblocks[b])
        return gx, gblocks


def blockdiag_matmul(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Apply a block-diagonal matrix to the last dim of ``x``.

    ``blocks`` has shape (B, out_b, in_b); ``x`` has shape (..., B * in_b); the result (..., B * out_b).
    """
    ops = _cpu_operands(x, blocks)
    if ops is None:
        return _blockdiag_bmm(x, blocks)
    x, blocks = ops
    num_blocks, out_b, in_b = blocks.shape
    with _no_autocast():
        y = _BlockDiagColumns.apply(_rows(x.reshape(-1, num_blocks * in_b)), blocks)
    return y.view(*x.shape[:-1], num_blocks * out_b)


def shuffle(x: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """The perfect shuffle f: view the last dim as (B, n/B), transpose, flatten (mixes the blocks)."""
    n = x.shape[-1]
    return x.reshape(*x.shape[:-1], num_blocks, n // num_blocks).transpose(-1, -2).reshape(x.shape)


def unshuffle(x: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """The inverse of :func:`shuffle`."""
    n = x.shape[-1]
    return x.reshape(*x.shape[:-1], n // num_blocks, num_blocks).transpose(-1, -2).reshape(x.shape)


def unshuffled_chunks(blocks_out: torch.Tensor) -> list[tuple[int, int, int]]:
    """How un-shuffle(block-diagonal(z)) splits into plain matmuls writing contiguous output columns.

    Block c of ``blocks_out`` (B, out_b, k) maps z[:, c*k:(c+1)*k] to g_c (out_b wide), and
    un-shuffle sends g_c[o*B + q] to output column q*(n/B) + c*(out_b/B) + o (n = B*out_b). So for
    each (c, q) the weight rows ``blocks_out[c, q::B]`` produce one contiguous run of out_b/B output
    columns. Returns (c, q, first output column) per run, in increasing output column; needs
    out_b % B == 0.
    """
    num_blocks, out_b, _ = blocks_out.shape
    n, run = num_blocks * out_b, out_b // num_blocks
    return [(c, q, q * (n // num_blocks) + c * run) for q in range(num_blocks) for c in range(num_blocks)]


class _UnshuffledBlockDiag(torch.autograd.Function):
    """unshuffle(z @ blockdiag(blocks_out)^T), written run by run into the output (no un-shuffle copy)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, blocks_out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        num_blocks, out_b, k = blocks_out.shape
        run = out_b // num_blocks
        y = z.new_empty(z.shape[0], num_blocks * out_b)
        for c, q, start in unshuffled_chunks(blocks_out):
            torch.mm(z[:, c * k:(c + 1) * k], blocks_out[c, q::num_blocks].T, out=y[:, start:start + run])
        ctx.save_for_backward(z, blocks_out)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        z, blocks_out = ctx.saved_tensors
        num_blocks, out_b, k = blocks_out.shape
        run = out_b // num_blocks
        gy = _rows(gy)
        gz = torch.zeros_like(z) if ctx.needs_input_grad[0] else None
        gblocks = torch.empty_like(blocks_out) if ctx.needs_input_grad[1] else None
        for c, q, start in unshuffled_chunks(blocks_out):
            g = gy[:, start:start + run]
            if gz is not None:  # each input block feeds B runs: accumulate their gradients
                gz[:, c * k:(c + 1) * k].addmm_(g, blocks_out[c, q::num_blocks])
            if gblocks is not None:
                torch.mm(g.T, z[:, c * k:(c + 1) * k], out=gblocks[c, q::num_blocks])
        return gz, gblocks


def blockshuffle_matmul(x: torch.Tensor, blocks_in: torch.Tensor, blocks_out: torch.Tensor) -> torch.Tensor:
    """f^-1(U_b f(V_b x)) for ``blocks_in`` V_b (B, inner/B, in/B) and ``blocks_out`` U_b (B, out/B, inner/B)."""
    num_blocks, out_b, _ = blocks_out.shape
    ops = _cpu_operands(x, blocks_in, blocks_out)
    if ops is None or out_b % num_blocks:
        h = shuffle(blockdiag_matmul(x, blocks_in), num_blocks)
        return unshuffle(blockdiag_matmul(h, blocks_out), num_blocks)
    x, blocks_in, blocks_out = ops
    z = shuffle(blockdiag_matmul(x.reshape(-1, x.shape[-1]), blocks_in), num_blocks)  # the one copy (narrow)
    with _no_autocast():
        y = _UnshuffledBlockDiag.apply(z, blocks_out)
    return y.view(*x.shape[:-1], num_blocks * out_b)
