"""GELU after an FFN linear, fused into its last matmul for inference (CPU: oneDNN; CUDA: cuBLASLt).

In a GPT-style FFN, ``gelu(up(x))`` costs the matmul plus a separate pass over the 4 x width
activations; on a CPU that pass (and the bias add before it) is a large share of a LowRank FFN's time
(docs/results/efficiency-cpu.md), so it caps the speed-up that the saved FLOPs could give. oneDNN can apply bias and
GELU-tanh to the matmul's output tiles while they are still in cache (the GPU recipes of the paper
fuse bias-GELU the same way). On CUDA, ``torch._addmm_activation`` runs cuBLASLt's GELU_BIAS epilogue
(GELU-tanh) on the layer's last dense matrix: dense, LowRank and BlockDense alike; BlockShuffle ends
in a permutation and keeps the separate pass there. Neither fused op has a backward, so training and
anything under autograd keep the plain path; the fused paths give the same values up to rounding.

``layer`` may also be a wrapper that takes a structured layer's place and gives its own
:meth:`~StructuredLinear.dense_tail` (pre-merge, :class:`lowrank_lm.premerge.PremergedLinear`, which holds the
layer as ``structured``). A layer with forward hooks (self-guided training's guide) runs through its call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowrank_lm.fallback import try_fast
from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.layers.blockdiag import blockdiag_matmul, shuffle, unshuffled_chunks
from lowrank_lm.layers.blockshuffle import BlockShuffleLinear

_FUSABLE_DTYPES = (torch.float32, torch.bfloat16)
# Below these token counts the activation pass that fusion saves is smaller than the oneDNN call's own
# overhead (docs/results/efficiency-cpu.md); BlockShuffle makes B x B calls, so pays it B x B times.
MIN_TOKENS = 16
MIN_TOKENS_BLOCKSHUFFLE = 256


def _fused_kernel_available(dtype: torch.dtype) -> bool:
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    return dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _can_fuse(layer: StructuredLinear, x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype not in _FUSABLE_DTYPES or torch.compiler.is_compiling():
        return False  # GPUs and torch.compile fuse on their own
    if torch.is_autocast_enabled("cpu"):
        return False  # the oneDNN op does not follow autocast's casting rules
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters())):
        return False  # no backward for the fused op
    if _hooked(layer):
        return False
    return _fused_kernel_available(x.dtype)


def _hooked(layer: nn.Module) -> bool:
    """Whether forward hooks change what ``layer`` (or the structured layer it wraps) computes."""
    inner = getattr(layer, "structured", layer)
    return any(bool(m._forward_hooks or m._forward_pre_hooks) for m in (layer, inner))


def _blockshuffle_gelu(layer: BlockShuffleLinear, x: torch.Tensor) -> torch.Tensor | None:
    """BlockShuffle's output is B x B runs of plain matmul columns (blockdiag.unshuffled_chunks): fuse
    bias + GELU into each run and concatenate them in output order, or None when the shape has no runs."""
    num_blocks, out_b, k = layer.blocks_out.shape
    if out_b % num_blocks:
        return None
    z = shuffle(blockdiag_matmul(x.reshape(-1, layer.in_features), layer.blocks_in), num_blocks)
    run = out_b // num_blocks
    bias = layer.bias.to(x.dtype) if layer.bias is not None else None
    chunks = [torch.ops.mkldnn._linear_pointwise(z[:, c * k:(c + 1) * k],
                                                 layer.blocks_out[c, q::num_blocks].contiguous(),
                                                 None if bias is None else bias[start:start + run],
                                                 "gelu", [], "tanh")
              for c, q, start in unshuffled_chunks(layer.blocks_out)]  # in increasing output column
    return torch.cat(chunks, dim=-1).view(*x.shape[:-1], layer.out_features)


EPILOGUE = "cuBLASLt bias+GELU epilogue"
"""The fast path's name in warnings and :data:`lowrank_lm.fallback.TAKEN`."""
EPILOGUE_GELU = {"cuda": "tanh", "cpu": "none"}
"""Which GELU ``torch._addmm_activation`` applies on each device: cuBLASLt's epilogue (and PyTorch's CUDA
fallback) use the tanh approximation, the model's GELU; its CPU kernel uses the exact GELU. So on CPU it
can check the plumbing of :func:`epilogue_gelu_linear` (tests), but only CUDA uses it for the model."""


def _can_fuse_cuda(layer: StructuredLinear, x: torch.Tensor) -> bool:
    if x.device.type != "cuda" or torch.compiler.is_compiling():
        return False  # torch.compile fuses bias + GELU itself
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters())):
        return False  # _addmm_activation has no backward
    return not _hooked(layer)


def epilogue_gelu_linear(layer: StructuredLinear, x: torch.Tensor) -> torch.Tensor | None:
    """GELU of ``layer(x)`` with bias + GELU in the epilogue of the last matmul (``torch._addmm_activation``),
    or None for a layer without a final dense matrix (BlockShuffle). Follows autocast like F.linear."""
    tail = layer.dense_tail(x)  # a pre-merge wrapper gives its merged weight for small calls
    if tail is None:
        return None
    h, weight = tail
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else weight.dtype
    h2 = h.reshape(-1, h.shape[-1]).to(dtype)
    bias = layer.bias.to(dtype) if layer.bias is not None else h2.new_zeros(layer.out_features)
    with torch.autocast(x.device.type, enabled=False):  # operands already in autocast's dtype
        y = torch._addmm_activation(bias, h2, weight.to(dtype).t(), use_gelu=True)
    return y.view(*x.shape[:-1], layer.out_features)


def gelu_linear(layer: StructuredLinear, x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh approximation) of ``layer(x)``; one fused matmul + bias + GELU call where possible."""
    if _can_fuse_cuda(layer, x):
        y = try_fast(EPILOGUE, epilogue_gelu_linear, layer, x)  # None: no dense tail, or it failed (warned once)
        if y is not None:
            return y
    tokens = x.numel() // layer.in_features
    if tokens >= MIN_TOKENS and _can_fuse(layer, x):
        tail = layer.dense_tail(x)  # a pre-merge wrapper gives its merged weight for small calls
        if tail is not None and tail[1].dtype == x.dtype:
            h, weight = tail
            bias = layer.bias if layer.bias is None or layer.bias.dtype == x.dtype else layer.bias.to(x.dtype)
            return torch.ops.mkldnn._linear_pointwise(h, weight, bias, "gelu", [], "tanh")
        structure = getattr(layer, "structured", layer)  # the layer a pre-merge wrapper holds
        if (tail is None and isinstance(structure, BlockShuffleLinear) and structure.blocks_out.dtype == x.dtype
                and tokens >= MIN_TOKENS_BLOCKSHUFFLE):
            y = _blockshuffle_gelu(structure, x)
            if y is not None:
                return y
    return F.gelu(layer(x), approximate="tanh")
