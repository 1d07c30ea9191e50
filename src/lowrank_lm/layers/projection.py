"""Best approximations of a dense weight by low-rank factors: the truncated SVD (Eckart–Young).

The structures whose parameters split into independent low-rank pieces of the dense matrix (LowRank: one
piece; BlockDense: one per input block; BlockShuffle and BTT: one per pair of input and output blocks) find
their best Frobenius approximation of a dense weight with :func:`rank_factors` on each piece.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def rank_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with U (..., m, rank), V (..., rank, n) and U V the best rank-``rank`` approximation of ``w`` (..., m, n).

    Each factor carries the square root of the kept singular values (balanced, as the spectral init). A
    rank above min(m, n) pads with zero columns / rows: the product is then ``w`` itself. The SVD runs in
    float32 (at least) and the factors come back in ``w``'s dtype.
    """
    m, n = w.shape[-2:]
    work = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    k = min(rank, s.shape[-1])
    root = s[..., :k].sqrt()
    uf = w.new_zeros(*w.shape[:-2], m, rank)
    vf = w.new_zeros(*w.shape[:-2], rank, n)
    uf[..., :k] = (u[..., :k] * root[..., None, :]).to(w.dtype)
    vf[..., :k, :] = (root[..., :, None] * vh[..., :k, :]).to(w.dtype)
    return uf, vf
