"""FFN linear layers: dense and structured, built from an :class:`~lowrank_lm.config.FFNConfig`."""

from __future__ import annotations

from lowrank_lm.config import FFNConfig
from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.layers.blockdense import BlockDenseLinear
from lowrank_lm.layers.blockshuffle import BlockShuffleLinear
from lowrank_lm.layers.dense import DenseLinear
from lowrank_lm.layers.lowrank import LowRankLinear

__all__ = [
    "BlockDenseLinear",
    "BlockShuffleLinear",
    "DenseLinear",
    "LowRankLinear",
    "StructuredLinear",
    "build_linear",
]


def build_linear(in_features: int, out_features: int, cfg: FFNConfig, bias: bool,
                 std: float, dense: bool = False) -> StructuredLinear:
    """The one place that turns an FFN config into a linear layer (``dense=True`` forces dense)."""
    kind = "dense" if dense else cfg.kind
    if kind == "dense":
        layer: StructuredLinear = DenseLinear(in_features, out_features, bias)
        init = "random" if dense else (cfg.init or "random")
    elif kind == "lowrank":
        assert cfg.rank is not None
        layer = LowRankLinear(in_features, out_features, cfg.rank, bias)
        init = cfg.init or "spectral"
    elif kind == "blockshuffle":
        assert cfg.num_blocks is not None
        layer = BlockShuffleLinear(in_features, out_features, cfg.num_blocks, bias)
        init = cfg.init or "orthonormal"
    elif kind == "blockdense":
        assert cfg.rank is not None and cfg.num_blocks is not None
        layer = BlockDenseLinear(in_features, out_features, cfg.rank, cfg.num_blocks, bias)
        init = cfg.init or "orthonormal"
    else:
        raise ValueError(f"unknown FFN kind {kind!r}")
    layer.reset_parameters(std, init)
    if cfg.premerge_max_tokens and kind != "dense":
        layer.premerge_max_tokens = cfg.premerge_max_tokens
    return layer
