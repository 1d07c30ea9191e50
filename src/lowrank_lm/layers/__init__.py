"""FFN linear layers: dense and structured, one module each, found through :mod:`lowrank_lm.layers.registry`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lowrank_lm.layers import registry
from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.layers.blockdense import BlockDenseLinear
from lowrank_lm.layers.blockshuffle import BlockShuffleLinear
from lowrank_lm.layers.dense import DenseLinear
from lowrank_lm.layers.lowrank import LowRankLinear

if TYPE_CHECKING:
    from lowrank_lm.config import StructureConfig

__all__ = [
    "BlockDenseLinear",
    "BlockShuffleLinear",
    "DenseLinear",
    "LowRankLinear",
    "StructuredLinear",
    "build_linear",
]


def build_linear(in_features: int, out_features: int, cfg: StructureConfig, bias: bool,
                 std: float, dense: bool = False, output_side: bool = False) -> StructuredLinear:
    """The one place that turns a structure's settings (model.ffn or model.attn) into a linear layer
    (``dense=True`` forces dense; ``output_side``: it ends a residual branch, see :func:`registry.build`)."""
    return registry.build(in_features, out_features, cfg, bias, std, dense, output_side)
