"""Parameters and FLOPs from the real layer shapes, in the paper's convention and the usual 6N one.

The paper's convention (reference section 4.2): training FLOPs = 3 x forward FLOPs, where the
forward pass of T tokens with context S costs, per layer, 2 x (Q, K, V, O matmul weights, structured
or not) x T plus 2 x 2 x T x S x attn_dim for the attention scores and values (full S^2, no causal halving), plus
2 x (FFN weight parameters) x T, plus 2 x T x vocab x hidden for the logits. Biases, norms and the
softmax are ignored. The run length is int(tokens / (global_batch x seq_len)) steps.

The "6N" convention (Kaplan et al.) is reported beside it, labelled as such: 6 x (non-embedding
parameters + output projection) + 6 x layers x S x attn_dim per token (causal attention sees S/2
keys on average).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lowrank_lm.config import Config, ModelConfig
from lowrank_lm.layers import StructuredLinear, registry
from lowrank_lm.model import Attention, FeedForward, Transformer

# Dense bf16 tensor-core peak FLOP/s by device name fragment; MFU is "unknown" for anything else.
PEAK_FLOPS_BF16: dict[str, float] = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
}


def peak_flops(device: torch.device | str) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device from the table, or None when unknown (e.g. CPUs)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS_BF16.items():
        if key in name:
            return value
    return None


def build_meta(cfg: ModelConfig) -> Transformer:
    """The model on the meta device: real shapes, no memory, no initialisation work."""
    with torch.device("meta"):
        return Transformer(cfg)


@dataclass
class ModelCounts:
    """Parameter and per-token FLOP counts of one model configuration."""

    params: int
    params_embedding: int
    params_non_embedding: int
    params_ffn: int
    """Weight parameters of all FFN linears (biases excluded), as the paper counts "FFN size"."""
    params_attention: int
    forward_flops_per_token: int
    """Paper convention, at full context seq_len."""
    flops_per_token: int
    """Training FLOPs per token, paper convention (3 x forward)."""
    flops_per_token_6n: int
    """Training FLOPs per token, 6N + causal attention convention."""
    guide_flops_per_token: int
    """Training FLOPs per token of the dense guides, if every structured layer had one (self-guided; 0 for a
    non-linear structure, which cannot have guides)."""


def count_model(model: Transformer) -> ModelCounts:
    """Count parameters and FLOPs from a built model (any device, meta included)."""
    cfg = model.cfg
    params = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel() + (model.lm_head.weight.numel() if model.lm_head is not None else 0)
    ffn = attn = ffn_flops = attn_flops = guide = 0
    for m in model.modules():
        if isinstance(m, Attention):
            attn += sum(p.numel() for p in m.parameters())
            attn_flops += 2 * m.num_matrix_params() + 2 * 2 * cfg.seq_len * cfg.resolved_attn_dim
        elif isinstance(m, FeedForward):
            layers = [x for x in m.modules() if isinstance(x, StructuredLinear)]
            ffn += sum(x.num_matrix_params() for x in layers)
            ffn_flops += sum(x.flops_per_token() for x in layers)
    if registry.all_linear(cfg):  # a non-linear structure cannot have a guide (no merged weight)
        for layer in model.structured_layers():
            guide += 2 * layer.in_features * layer.out_features
    logits = 2 * cfg.vocab_size * cfg.hidden_dim
    forward = attn_flops + ffn_flops + logits
    n_6n = params - embedding + cfg.vocab_size * cfg.hidden_dim
    flops_6n = 6 * n_6n + 6 * cfg.num_layers * cfg.seq_len * cfg.resolved_attn_dim
    return ModelCounts(params=params, params_embedding=embedding, params_non_embedding=params - embedding,
                       params_ffn=ffn, params_attention=attn, forward_flops_per_token=forward,
                       flops_per_token=3 * forward, flops_per_token_6n=flops_6n,
                       guide_flops_per_token=3 * guide)


def token_budget(cfg: Config, params: int) -> int:
    """The requested token budget: train.tokens, or tokens_per_param x params, or 20 x params."""
    t = cfg.train
    if t.tokens is not None:
        return t.tokens
    return round((t.tokens_per_param if t.tokens_per_param is not None else 20.0) * params)


def guided_flops(counts: ModelCounts, cfg: Config, steps: int, tokens_per_step: int) -> tuple[int, int]:
    """(extra steps, extra guide FLOPs) of self-guided training for a run of ``steps`` steps.

    The guide runs with probability alpha (reduce_flop) or always, for ratio x steps guided steps;
    with a cosine or linear decay its expected cost is half a dense pass per guided step. fixedflop
    mode appends the guided steps again at the end.
    """
    sg = cfg.train.self_guided
    if not sg.enabled:
        return 0, 0
    guided = int(sg.ratio * steps)
    extra_steps = guided if sg.mode == "fixedflop" else 0
    # reduce_flop: guide used with probability alpha, weight alpha -> expected 0.5 pass per step;
    # without it the guide runs on every guided step.
    share = 0.5 if sg.reduce_flop else 1.0
    return extra_steps, int(share * guided * tokens_per_step * counts.guide_flops_per_token)


@dataclass
class RunAccounting(ModelCounts):
    """Model counts plus the run: token budget, steps and training FLOPs."""

    tokens_requested: int
    tokens_per_step: int
    steps: int
    train_tokens: int
    train_flops: int
    train_flops_6n: int
    self_guided_extra_steps: int
    self_guided_extra_flops: int

    def to_dict(self) -> dict:
        """The counts as plain JSON-ready data."""
        return asdict(self)


def account(cfg: Config, model: Transformer | None = None) -> RunAccounting:
    """Counts for ``cfg`` (built on the meta device unless a model is given) and its token budget."""
    counts = count_model(model if model is not None else build_meta(cfg.model))
    requested = token_budget(cfg, counts.params)
    per_step = cfg.train.global_batch_size * cfg.model.seq_len
    steps = requested // per_step
    extra_steps, extra_flops = guided_flops(counts, cfg, steps, per_step)
    total_steps = steps + extra_steps
    tokens = steps * per_step
    return RunAccounting(
        **asdict(counts), tokens_requested=requested, tokens_per_step=per_step, steps=steps,
        train_tokens=tokens, train_flops=total_steps * per_step * counts.flops_per_token + extra_flops,
        train_flops_6n=total_steps * per_step * counts.flops_per_token_6n + extra_flops,
        self_guided_extra_steps=extra_steps, self_guided_extra_flops=extra_flops)
