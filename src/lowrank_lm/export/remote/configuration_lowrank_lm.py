"""Configuration of a lowrank-lm Transformer with structured feed-forward layers (trust_remote_code).

Written by the lowrank-lm exporter. Self-contained: imports transformers only.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class LowRankLMConfig(PretrainedConfig):
    """A pre-norm decoder with RoPE, grouped-query attention and dense or structured linears.

    ``ffn_kind`` names the structure of the FFN linears (lowrank-lm's ``model.ffn.kind``), sized by
    ``ffn_rank`` / ``ffn_num_blocks`` where it reads them; ``attn_kind`` and its settings do the same
    for the attention projections. None is the dense baseline. The structures' modules are the files
    beside this one. Blocks listed in ``dense_ffn_layers`` keep a dense FFN.
    """

    model_type = "lowrank_lm"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 1024,
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        activation: str = "gelu",
        bias: bool = True,
        rope_base: float = 10000.0,
        ffn_kind: str | None = None,
        ffn_rank: int | None = None,
        ffn_num_blocks: int | None = None,
        attn_kind: str | None = None,
        attn_rank: int | None = None,
        attn_num_blocks: int | None = None,
        dense_ffn_layers: list[int] | None = None,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.norm = norm
        self.norm_eps = norm_eps
        self.activation = activation
        self.bias = bias
        # Named rope_base, not rope_theta, so that no transformers version reinterprets it as rope scaling.
        self.rope_base = rope_base
        self.ffn_kind = ffn_kind
        self.ffn_rank = ffn_rank
        self.ffn_num_blocks = ffn_num_blocks
        self.attn_kind = attn_kind
        self.attn_rank = attn_rank
        self.attn_num_blocks = attn_num_blocks
        self.dense_ffn_layers = list(dense_ffn_layers) if dense_ffn_layers is not None else [0]
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
