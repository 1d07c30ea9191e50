"""The Transformer language model alone: embeddings, RoPE, GQA attention, structured FFNs, KV cache.

Defaults are the paper's GPT-style model (pre-LN LayerNorm, GELU-tanh, biases, RoPE on the full head
dim, tied embeddings); RMSNorm, SwiGLU, no bias and untied heads give the Llama style. No training,
logging or I/O lives here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lowrank_lm import mup
from lowrank_lm.config import ModelConfig
from lowrank_lm.layers import DenseLinear, StructuredLinear, build_linear, registry
from lowrank_lm.layers.fused import gelu_linear
from lowrank_lm.loss import lm_loss


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dim: the rotation that RoPE multiplies by sin."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """Non-interleaved rotary position embedding on the full head dim (as in GPT-NeoX and Llama)."""

    def __init__(self, head_dim: int, max_len: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # (max_len, head_dim)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape (B, H, T, hd) for positions start .. start+T-1.

        ``start`` may be a 0-dim long tensor (a static decode step, T = 1): the angles are then gathered
        on the device, so the step has the same shapes and no host value at every position.
        """
        if isinstance(start, torch.Tensor):
            at = start.view(1)
            cos, sin = self.cos.index_select(0, at).to(x.dtype), self.sin.index_select(0, at).to(x.dtype)
        else:
            t = x.shape[-2]
            cos = self.cos[start:start + t].to(x.dtype)
            sin = self.sin[start:start + t].to(x.dtype)
        return x * cos + rotate_half(x) * sin


class KVCache:
    """Preallocated keys and values of every layer, (B, n_kv, max_len, hd) each; ``pos`` tokens filled.

    Eager calls (prefill, eager decoding) write at the host position ``pos`` and attend to the filled
    part. A static decode step (:meth:`Transformer.decode_step`) writes at a position tensor instead
    and attends to the first ``span`` slots (a multiple of a bucket size set by the decoder) with a
    mask, so its shapes change only when the span does.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        shape = (batch, cfg.resolved_kv_heads, max_len, cfg.head_dim)
        # one tensor per layer, not views of one: a compiled step then updates each in place (a write into
        # a view of a graph input makes torch.compile copy the whole base tensor back)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.slots = torch.arange(max_len, device=device)
        self.pos = 0
        self.span = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write layer ``layer``'s new keys and values at the current position; returns the filled part
        of its cache (the keys and values to attend to)."""
        end = self.pos + k.shape[-2]
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def write_at(self, layer: int, k: torch.Tensor, v: torch.Tensor,
                 pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one token's keys and values at slot ``pos`` (0-dim tensor); the first ``span`` slots back."""
        at = pos.view(1)
        self.k[layer].index_copy_(2, at, k)
        self.v[layer].index_copy_(2, at, v)
        return self.k[layer][:, :, :self.span], self.v[layer][:, :, :self.span]

    def visible(self, pos: torch.Tensor) -> torch.Tensor:
        """The attention mask of the token at ``pos``: slots 0..pos of the span, broadcast over (B, H, 1, span)."""
        return (self.slots[:self.span] <= pos).view(1, 1, 1, -1)


def matrix_params(layer: nn.Module) -> int:
    """Weights of a linear layer, biases excluded (also its multiply-accumulates per token).

    A plain ``nn.Linear`` counts its weight; anything else (a structured layer, or the pre-merge wrapper that
    stands in for one at inference) counts itself with ``num_matrix_params()``.
    """
    return layer.weight.numel() if isinstance(layer, nn.Linear) else layer.num_matrix_params()


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads; attn_dim may differ from hidden_dim.

    The projections take model.attn's structure. Dense ones (or ``dense=True``) are plain nn.Linear layers,
    initialised with the model as before structured attention existed: same seeds, same checkpoint keys.
    """

    def __init__(self, cfg: ModelConfig, dense: bool = False) -> None:
        super().__init__()
        self.num_q, self.num_kv, self.head_dim = cfg.num_q_heads, cfg.resolved_kv_heads, cfg.head_dim
        h, a, kv = cfg.hidden_dim, cfg.resolved_attn_dim, cfg.kv_dim
        if dense or not registry.get(cfg.attn.kind).structured:
            self.qkv = nn.Linear(h, a + 2 * kv, bias=cfg.bias)  # fused: one matmul for q, k, v
            self.out = nn.Linear(a, h, bias=cfg.bias)
        else:
            self.qkv = build_linear(h, a + 2 * kv, cfg.attn, cfg.bias, cfg.init_std)
            self.out = build_linear(a, h, cfg.attn, cfg.bias, cfg.init_std, output_side=True)
        self.split = (a, kv, kv)
        self.scale = mup.attention_scale(cfg)  # None: scaled_dot_product_attention's 1/sqrt(head_dim)

    def num_matrix_params(self) -> int:
        """Weights of the projections, biases excluded."""
        return matrix_params(self.qkv) + matrix_params(self.out)

    def forward(self, x: torch.Tensor, rope: Rotary, cache: KVCache | None, layer: int,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """``pos`` (a 0-dim tensor, with ``cache``) makes this a static decode step of one token."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(b, t, self.num_q, self.head_dim).transpose(1, 2)  # (B, Hq, T, hd)
        k = k.view(b, t, self.num_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
        gqa = self.num_kv != self.num_q
        if pos is not None and cache is not None:
            q, k = rope(q, pos), rope(k, pos)
            k, v = cache.write_at(layer, k, v, pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.visible(pos), enable_gqa=gqa,
                                               scale=self.scale)
            return self.out(y.transpose(1, 2).reshape(b, t, -1))
        start = cache.pos if cache is not None else 0
        q, k = rope(q, start), rope(k, start)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        mask = None
        if start > 0 and t > 1:  # a chunk after a prefix: query i sees keys up to start + i
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=start == 0 and t > 1,
                                           enable_gqa=gqa, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """up -> activation -> down (GELU-tanh), or SwiGLU with a gate; each linear may be structured."""

    def __init__(self, cfg: ModelConfig, dense: bool) -> None:
        super().__init__()
        h, f, std = cfg.hidden_dim, cfg.resolved_ffn_dim, cfg.init_std
        self.swiglu = cfg.activation == "swiglu"
        self.up = build_linear(h, f, cfg.ffn, cfg.bias, std, dense)
        self.gate = build_linear(h, f, cfg.ffn, cfg.bias, std, dense) if self.swiglu else None
        self.down = build_linear(f, h, cfg.ffn, cfg.bias, std, dense, output_side=True)

    def num_matrix_params(self) -> int:
        """Weights of the linears, biases excluded."""
        return sum(matrix_params(x) for x in (self.up, self.gate, self.down) if x is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(gelu_linear(self.up, x))  # = gelu(up(x)); fused on CPU in inference


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The model's norm over hidden_dim: RMSNorm, or LayerNorm (with a bias when the model has biases)."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.hidden_dim, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.hidden_dim, eps=cfg.norm_eps, bias=cfg.bias)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig, dense_ffn: bool) -> None:
        super().__init__()
        self.attn_norm, self.attn = make_norm(cfg), Attention(cfg)
        self.ffn_norm, self.ffn = make_norm(cfg), FeedForward(cfg, dense_ffn)

    def forward(self, x: torch.Tensor, rope: Rotary, cache: KVCache | None, layer: int,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, cache, layer, pos)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """Decoder-only LM. ``model(ids)`` gives logits (B, T, V); ``model(ids, targets)`` the mean loss."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # training forwards keep only each block's input and recompute the rest in backward (less memory)
        self.activation_checkpointing = False
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_dim)
        keep = set(cfg.ffn.keep_dense_layers)
        self.blocks = nn.ModuleList(Block(cfg, not registry.get(cfg.ffn.kind).structured or i in keep)
                                    for i in range(cfg.num_layers))
        self.norm = make_norm(cfg)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_dim, cfg.vocab_size, bias=False)
        self.rope = Rotary(cfg.head_dim, cfg.seq_len, cfg.rope_base)
        self.loss_chunk_tokens = 0
        """Tokens per chunk of the loss (train.loss_chunk_tokens; 0 = through the full logits)."""
        self.readout_scale = mup.readout_scale(cfg)
        """muP with tied embeddings: the logits' multiplier 1/m (None: no multiplier)."""
        self._init_weights()
        if mup.enabled(cfg) and not self.embed.weight.is_meta:
            mup.init_(self)

    @torch.no_grad()
    def _init_weights(self) -> None:
        # N(0, init_std) everywhere, biases 0, no depth scaling (the paper's recipe).
        # FFN layers and structured attention initialise themselves (spectral / orthonormal / Gaussian) when built.
        if self.embed.weight.is_meta:
            return
        std = self.cfg.init_std
        self.embed.weight.normal_(0.0, std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()

    def head_weight(self) -> torch.Tensor:
        """The output projection's weight: the embedding when tied, else the head's."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, V), or with ``targets`` (-1: not counted) the loss: their mean or sum (``reduction``).

        The loss goes through :func:`lowrank_lm.loss.lm_loss` in chunks of ``loss_chunk_tokens`` tokens.
        """
        t = input_ids.shape[1]
        start = cache.pos if cache is not None else 0
        if start + t > self.cfg.seq_len:
            raise ValueError(f"{start + t} positions exceed model.seq_len={self.cfg.seq_len}")
        x = self.embed(input_ids)
        recompute = self.activation_checkpointing and self.training and cache is None
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(block, x, self.rope, cache, i, use_reentrant=False)
            else:
                x = block(x, self.rope, cache, i)
        if cache is not None:
            cache.pos += t
        if targets is None:
            return F.linear(self.final_norm(x), self.head_weight())
        return lm_loss(self.final_norm(x), self.head_weight(), targets, self.loss_chunk_tokens, reduction)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer's input: the final norm, times the muP readout multiplier if there is one."""
        y = self.norm(x)
        return y if self.readout_scale is None else y * self.readout_scale

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, V) of one token per sequence, ``tokens`` (B, 1), at position ``pos`` (a 0-dim tensor).

        Every shape is fixed by the cache (batch, span), whatever the position: the step can be
        compiled once and captured in a CUDA graph (see :mod:`lowrank_lm.decoding`).
        """
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, self.rope, cache, i, pos)
        return F.linear(self.final_norm(x[:, -1]), self.head_weight())

    def structured_layers(self) -> Iterator[StructuredLinear]:
        """The linears that are not dense, FFN and attention (the ones pre-merge and self-guidance act on)."""
        for m in self.modules():
            if isinstance(m, StructuredLinear) and not isinstance(m, DenseLinear):
                yield m
