"""A lowrank-lm Transformer with its structured factors kept (trust_remote_code).

Written by the lowrank-lm exporter. Self-contained: imports torch and transformers, and the files the
exporter copies beside it, so it loads where lowrank-lm is not installed. Keeping the factors (instead of
merging them into dense weights) keeps the parameter count and the per-token FLOPs of the trained model.

The linear layers are the structures' own modules, copied from lowrank-lm: ``structures_lowrank_lm.py``
(written per export) imports the structures this model uses, and each builds its layer from the
``<part>_kind`` and ``<part>_<setting>`` values of the config (part ``ffn``, or ``attn`` for the
attention projections). The parameter names are lowrank-lm's, so export writes its weights unchanged
under a ``model.`` prefix.

The architecture: token embedding; per block, pre-norm attention (fused q|k|v projection, RoPE on the
full head dim in the non-interleaved "rotate half" form, grouped-query heads) and pre-norm FFN
(GELU-tanh up/down, or SwiGLU gate/up/down) with sequential residuals; final norm; a head tied to the
embedding unless ``tie_word_embeddings`` is false.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_lowrank_lm import LowRankLMConfig
from .structures_lowrank_lm import DENSE, SIZE_SETTINGS, STRUCTURES

# transformers 5 names the KV-cache argument and output field ``cache``; 4.x named them ``past_key_values``.
_CACHE_FIELD = ("cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
                else "past_key_values")


def _kind(config: LowRankLMConfig, part: str) -> str:
    """The structure of ``part``'s linear layers; unset means the dense baseline."""
    return getattr(config, f"{part}_kind", None) or DENSE


def _linear(config: LowRankLMConfig, part: str, in_features: int, out_features: int,
            dense: bool = False) -> nn.Module:
    """A linear layer of ``part`` (ffn or attn), built by its structure from the config's settings."""
    kind = DENSE if dense else _kind(config, part)
    settings = SimpleNamespace(kind=kind, **{s: getattr(config, f"{part}_{s}", None) for s in SIZE_SETTINGS})
    return STRUCTURES[kind].build(in_features, out_features, settings, config.bias)


# ----------------------------------------------------------------------------- the Transformer


def _norm(config: LowRankLMConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.bias)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope_tables(config: LowRankLMConfig, position_ids: torch.Tensor,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (B, 1, T, head_dim), computed in fp32 from the positions (no cached buffer)."""
    d = config.head_dim
    inv_freq = 1.0 / config.rope_base ** (torch.arange(0, d, 2, dtype=torch.float32,
                                                        device=position_ids.device) / d)
    angles = position_ids.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


class LowRankLMAttention(nn.Module):
    """Attention as in our model: fused q/k/v projection, RoPE, grouped-query heads, the KV cache of
    transformers."""

    def __init__(self, config: LowRankLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_q, self.num_kv, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                  config.head_dim)
        q_dim, kv_dim = self.num_q * self.head_dim, self.num_kv * self.head_dim
        self.qkv = _linear(config, "attn", config.hidden_size, q_dim + 2 * kv_dim)
        self.out = _linear(config, "attn", q_dim, config.hidden_size)
        self.split = (q_dim, kv_dim, kv_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: Cache | None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(b, t, self.num_q, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.num_kv != self.num_q:  # query head h reads key/value head h // (num_q / num_kv)
            k = k.repeat_interleave(self.num_q // self.num_kv, dim=1)
            v = v.repeat_interleave(self.num_q // self.num_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class LowRankLMFeedForward(nn.Module):
    """The FFN: up (and gate for SwiGLU), activation, down, each layer dense or structured."""

    def __init__(self, config: LowRankLMConfig, dense: bool) -> None:
        super().__init__()
        h, f = config.hidden_size, config.intermediate_size
        self.swiglu = config.activation == "swiglu"
        self.up = _linear(config, "ffn", h, f, dense)
        self.gate = _linear(config, "ffn", h, f, dense) if self.swiglu else None
        self.down = _linear(config, "ffn", f, h, dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class LowRankLMBlock(nn.Module):
    """One pre-norm block: attention then FFN, each added to the residual stream."""

    def __init__(self, config: LowRankLMConfig, layer_idx: int) -> None:
        super().__init__()
        dense = not STRUCTURES[_kind(config, "ffn")].structured or layer_idx in config.dense_ffn_layers
        self.attn_norm, self.attn = _norm(config), LowRankLMAttention(config, layer_idx)
        self.ffn_norm, self.ffn = _norm(config), LowRankLMFeedForward(config, dense)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: Cache | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        return x + self.ffn(self.ffn_norm(x))


class LowRankLMPreTrainedModel(PreTrainedModel):
    """The config class and weight initialisation shared by the model and its causal-LM head."""

    config_class = LowRankLMConfig
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["LowRankLMBlock"]
    _supports_cache_class = True

    def _init_weights(self, module: nn.Module) -> None:
        # Only for weights a checkpoint does not provide: N(0, initializer_range), biases 0, norms 1.
        std = self.config.initializer_range
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                nn.init.zeros_(p)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, std)


class LowRankLMModel(LowRankLMPreTrainedModel):
    """The decoder without its head: hidden states after the final norm."""

    def __init__(self, config: LowRankLMConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(LowRankLMBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = _norm(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Cache | None = None) -> torch.Tensor:
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        total = past + t
        if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[-1] != total):
            raise ValueError(f"attention_mask must have shape (batch, past + new tokens) = ({b}, {total}), "
                             f"got {tuple(attention_mask.shape)}")
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        if position_ids is None:
            if padded:  # left padding: a row's first real token is position 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
            else:
                position_ids = torch.arange(past, total, device=input_ids.device)[None].expand(b, t)
        mask = None
        if padded or (past > 0 and t > 1):
            q_pos = torch.arange(past, total, device=input_ids.device)[:, None]
            k_pos = torch.arange(total, device=input_ids.device)[None]
            mask = k_pos <= q_pos  # (t, total); the cache holds the keys before these queries
            if padded:
                # a query never sees padding, but always sees itself (no row without any key)
                mask = (mask[None] & attention_mask.bool()[:, None, :]) | (k_pos == q_pos)[None]
                mask = mask[:, None]  # (B, 1, t, total)
        x = self.embed(input_ids)
        cos, sin = _rope_tables(self.config, position_ids, x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin, mask, cache)
        return self.norm(x)


class LowRankLMForCausalLM(LowRankLMPreTrainedModel, GenerationMixin):
    """``model(input_ids).logits`` of shape (B, T, vocab); ``model.generate(...)`` with a KV cache."""

    def __init__(self, config: LowRankLMConfig) -> None:
        super().__init__(config)
        self.model = LowRankLMModel(config)
        # A tied head is the embedding matrix itself (no second parameter, no tying machinery needed).
        self.lm_head = (None if config.tie_word_embeddings
                        else nn.Linear(config.hidden_size, config.vocab_size, bias=False))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Module | None:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Cache | None = None,
                past_key_values: Cache | None = None, use_cache: bool | None = None,
                labels: torch.Tensor | None = None, logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        hidden = self.model(input_ids, attention_mask, position_ids, cache if use_cache else None)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        head = self.model.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, head)
        loss = None
        if labels is not None:  # next-token loss, -100 ignored (the transformers convention)
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})
