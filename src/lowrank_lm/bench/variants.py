"""Structured FFN variants at a parameter fraction: the rank or block count for a width and a kind.

Per FFN linear pair (hidden h -> ffn f -> h), the dense parameter count is 2hf and (reference
section 3.1) the two matrices keep 2(h+f)R weights with LowRank, R(h+f)(1+1/B) with BlockDense and
2 min(h,f)(h+f)/B with BlockShuffle. The one solver (lowrank_lm.sizing) counts these on the
layers themselves and picks the nearest share, which gives the paper's choices at f=4h: 63% -> R=h/2
or B=2, 32% -> R=h/4 or B=4.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowrank_lm import sizing
from lowrank_lm.config import Config, FFNConfig, ModelConfig
from lowrank_lm.errors import UserError
from lowrank_lm.layers import registry
from lowrank_lm.resolve import resolve

KINDS = registry.kinds()
BLOCKDENSE_BLOCKS = 4
"""Block count of a kind that also has a rank (BlockDense) when only a fraction is given (the paper's
choice at widths 1024 and 2048)."""


@dataclass(frozen=True)
class Structure:
    """One FFN parametrisation: kind, the fraction it was asked for, and its rank / blocks."""

    kind: str
    fraction: float
    rank: int | None = None
    num_blocks: int | None = None

    @property
    def label(self) -> str:
        """The name in tables, e.g. ``lowrank 32% (R=64)``; the kind alone for dense."""
        if not registry.get(self.kind).structured:
            return self.kind
        return f"{self.kind} {self.fraction:.0%} ({registry.describe(self.kind, self.rank, self.num_blocks)})"

    def ffn_config(self) -> FFNConfig:
        """The FFN section that builds this structure (every layer structured)."""
        return FFNConfig(kind=self.kind, rank=self.rank, num_blocks=self.num_blocks,  # type: ignore[arg-type]
                         keep_dense_layers=[])


def _rank_step(hidden: int, multiple_of: int = 1) -> int:
    """Ranks come in multiples of width/16 (so the paper's h/2 and h/4 come out exactly)."""
    step = max(1, hidden // 16)
    while step % multiple_of:
        step += 1
    return step


def _fixed_blocks(kind: str, blockdense_blocks: int) -> int | None:
    """The block count a kind keeps fixed while its rank is solved (BlockDense), else None."""
    spec = registry.get(kind)
    return blockdense_blocks if "num_blocks" in spec.settings and "num_blocks" not in spec.solved else None


def structure_for(kind: str, hidden: int, ffn_dim: int, fraction: float,
                  blockdense_blocks: int = BLOCKDENSE_BLOCKS) -> Structure:
    """The rank / block count giving about ``fraction`` of the dense FFN's weights at these dims.

    Solved by the registry's one solver (the share counted on the layers, nearest wins); ranks are
    multiples of width/16.
    """
    spec = registry.get(kind)  # a UserError naming the known kinds
    if not spec.structured:
        return Structure(kind, 1.0)
    if not 0 < fraction < 1:
        raise UserError(f"fraction {fraction} must be between 0 and 1 (e.g. 0.63 or 0.32)")
    blocks = _fixed_blocks(kind, blockdense_blocks)
    model = ModelConfig(hidden_dim=hidden, ffn_dim=ffn_dim, num_q_heads=1, num_layers=1,
                        ffn=FFNConfig(keep_dense_layers=[]))
    settings, _ = sizing.solve(model, kind, fraction, _rank_step(hidden, blocks or 1), blocks)
    return Structure(kind, fraction, rank=settings.get("rank"), num_blocks=settings.get("num_blocks"))


def explicit_structures(kind: str, ranks: list[int], blocks: list[int],
                        blockdense_blocks: int = BLOCKDENSE_BLOCKS) -> list[Structure]:
    """Structures from given ranks (kinds with a rank) or block counts (the others); fraction filled later."""
    return [Structure(kind, 0.0, rank=s.get("rank"), num_blocks=s.get("num_blocks"))
            for s in registry.with_setting(kind, ranks, blocks, _fixed_blocks(kind, blockdense_blocks))]


def ffn_model_config(hidden: int, structure: Structure, ffn_dim: int | None = None) -> ModelConfig:
    """A validated GPT-style model config whose FFN has this structure (for building one FFN block)."""
    model = ModelConfig(hidden_dim=hidden, ffn_dim=ffn_dim, num_q_heads=1, num_layers=1,
                        ffn=structure.ffn_config())
    # ConfigError (a UserError) names a rank or block count that does not fit
    return resolve(Config(model=model)).model


def with_structure(model: ModelConfig, structure: Structure) -> ModelConfig:
    """A copy of a whole-model config with its FFNs replaced by ``structure`` (dense blocks kept)."""
    from dataclasses import replace

    ffn = replace(structure.ffn_config(), keep_dense_layers=list(model.ffn.keep_dense_layers),
                  premerge_max_tokens=model.ffn.premerge_max_tokens)
    return resolve(Config(model=replace(model, ffn=ffn))).model
