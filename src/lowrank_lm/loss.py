"""The language-model loss without full logits: output projection and cross-entropy in chunks of tokens.

The full path computes logits for every token of the micro-batch (tokens x vocab, in fp32 for the
softmax) and keeps them for the backward pass; at the paper's micro-batch of 64 x 1024 tokens and a
32,000-token vocabulary that is about 8 GB, plus as much again for their gradient. The chunked path
takes ``chunk_tokens`` tokens at a time: their logits, their loss, and (when gradients are needed)
the gradients of the loss with respect to the hidden states and the output weight, right away. Only
those gradients outlive a chunk, so the peak is one chunk's logits. The backward pass then only
scales the stored gradients; no logits are recomputed.

Under autocast the projection runs in autocast's dtype and the softmax in fp32, as on the full path,
so the two agree to rounding (the weight gradient is summed over chunks in fp32). On CUDA, with
``liger-kernel`` installed (``pip install 'lowrank-lm[gpu]'``), its fused linear cross-entropy
(Triton kernels doing the same chunking) takes the place of ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowrank_lm.fallback import try_fast

IGNORE_INDEX = -1
"""Target value that contributes nothing to the loss (the model's convention)."""


def full_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                 reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``targets`` through the full logits (the reference path)."""
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction=reduction)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would run in here: autocast's when it is on, else the weight's."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (N, H) hidden states through an (V, H) weight, chunk by chunk.

    The gradients are computed in the forward pass (they need the chunk's softmax, which is what we do
    not want to keep) and scaled by the incoming gradient in the backward pass.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                chunk_tokens: int, dtype: torch.dtype, need_grad: bool) -> torch.Tensor:
        h, w = hidden.to(dtype), weight.to(dtype)
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_grad else None
        for start in range(0, h.shape[0], chunk_tokens):
            h_c, t_c = h[start:start + chunk_tokens], targets[start:start + chunk_tokens]
            logits = (h_c @ w.T).float()
            keep = t_c != IGNORE_INDEX
            safe = t_c.clamp(min=0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            total += torch.where(keep, lse - picked, 0.0).sum()
            if grad_h is not None and grad_w is not None:  # need_grad
                # d loss / d logits = softmax - one_hot, zero on ignored rows (computed in place: one buffer)
                g = logits.sub_(lse[:, None]).exp_()
                g[torch.arange(g.shape[0], device=g.device), safe] -= 1.0
                g.mul_(keep[:, None])
                g_c = g.to(dtype)
                torch.mm(g_c, w, out=grad_h[start:start + chunk_tokens])
                grad_w += (g_c.T @ h_c).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        gh = (grad_h * grad_total.to(grad_h.dtype)).to(h_dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_total).to(w_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None


LIGER = "liger fused linear cross-entropy"
"""The fast path's name in warnings and :data:`lowrank_lm.fallback.TAKEN`."""


def _liger_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str,
                dtype: torch.dtype) -> torch.Tensor | None:
    """liger-kernel's fused linear cross-entropy on CUDA, or None when it does not apply or is not installed."""
    if hidden.device.type != "cuda":
        return None
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX)  # mean: what every release supports
    with torch.autocast("cuda", enabled=False):  # liger wants one dtype for both operands: autocast's
        mean = fn(weight.to(dtype), hidden.to(dtype), targets).float()
    return mean if reduction == "mean" else mean * (targets != IGNORE_INDEX).sum()


@torch.compiler.disable  # its own kernels; under torch.compile the model around it stays compiled
def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``targets`` (IGNORE_INDEX skipped) without full logits.

    ``hidden`` is (..., H), ``targets`` the matching (...) token ids; ``reduction`` is mean (over the
    targets that count) or sum. Equal to :func:`full_lm_loss` up to rounding, gradients included.
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    dtype = _compute_dtype(h, weight)
    fused = try_fast(LIGER, _liger_loss, h, weight, t, reduction, dtype)  # None: not CUDA/installed, or failed
    if fused is not None:
        return fused
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    with torch.autocast(h.device.type, enabled=False):
        total = _ChunkedLinearCrossEntropy.apply(h, weight, t, chunk_tokens, dtype, need_grad)
    if reduction == "sum":
        return total
    return total / (t != IGNORE_INDEX).sum().clamp(min=1)


def lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = 0,
            reduction: str = "mean") -> torch.Tensor:
    """The LM loss: through full logits when ``chunk_tokens`` is 0, else in chunks of that many tokens."""
    if chunk_tokens == 0:
        return full_lm_loss(hidden, weight, targets, reduction)
    return chunked_lm_loss(hidden, weight, targets, chunk_tokens, reduction)
