"""Structured FFN variants at a parameter fraction: the rank or block count for a width and a kind.

Per FFN linear pair (hidden h -> ffn f -> h), the dense parameter count is 2hf and (reference
section 3.1) the two matrices keep 2(h+f)R weights with LowRank, R(h+f)(1+1/B) with BlockDense and
2 min(h,f)(h+f)/B with BlockShuffle. Solving each for a target fraction and rounding gives the paper's choices at f=4h:
63% -> R=h/2 or B=2, 32% -> R=h/4 or B=4 (BlockDense B=4: R=384 at h=1024, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

from lowrank_lm.config import Config, FFNConfig, ModelConfig, validate
from lowrank_lm.errors import UserError

KINDS = ("dense", "lowrank", "blockdense", "blockshuffle")
BLOCKDENSE_BLOCKS = 4
"""BlockDense block count when only a fraction is given (the paper's choice at widths 1024 and 2048)."""


@dataclass(frozen=True)
class Structure:
    """One FFN parametrisation: kind, the fraction it was asked for, and its rank / blocks."""

    kind: str
    fraction: float
    rank: int | None = None
    num_blocks: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "dense":
            return "dense"
        bits = [f"R={self.rank}" if self.rank else "", f"B={self.num_blocks}" if self.num_blocks else ""]
        return f"{self.kind} {self.fraction:.0%} ({', '.join(b for b in bits if b)})"

    def ffn_config(self) -> FFNConfig:
        return FFNConfig(kind=self.kind, rank=self.rank, num_blocks=self.num_blocks,  # type: ignore[arg-type]
                         keep_dense_layers=[])


def _round_rank(target: float, hidden: int, multiple_of: int = 1) -> int:
    """Round to a multiple of width/16 (so the paper's h/2 and h/4 come out exactly), at least one step."""
    step = max(1, hidden // 16)
    while step % multiple_of:
        step += 1
    return max(step, round(target / step) * step)


def structure_for(kind: str, hidden: int, ffn_dim: int, fraction: float,
                  blockdense_blocks: int = BLOCKDENSE_BLOCKS) -> Structure:
    """The rank / block count giving about ``fraction`` of the dense FFN's weights at these dims."""
    if kind not in KINDS:
        raise UserError(f"unknown FFN kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "dense":
        return Structure("dense", 1.0)
    if not 0 < fraction < 1:
        raise UserError(f"fraction {fraction} must be between 0 and 1 (e.g. 0.63 or 0.32)")
    h, f = hidden, ffn_dim
    if kind == "lowrank":
        return Structure(kind, fraction, rank=_round_rank(fraction * h * f / (h + f), h))
    if kind == "blockdense":
        b = blockdense_blocks
        return Structure(kind, fraction, rank=_round_rank(2 * fraction * h * f / ((h + f) * (1 + 1 / b)), h, b),
                         num_blocks=b)
    ideal = min(h, f) * (h + f) / (fraction * h * f)
    divisors = [b for b in range(1, min(h, f) + 1) if h % b == 0 and f % b == 0]
    return Structure(kind, fraction, num_blocks=min(divisors, key=lambda b: (abs(b - ideal), b)))


def explicit_structures(kind: str, ranks: list[int], blocks: list[int],
                        blockdense_blocks: int = BLOCKDENSE_BLOCKS) -> list[Structure]:
    """Structures from given ranks (lowrank, blockdense) or block counts (blockshuffle); fraction filled later."""
    if kind == "lowrank":
        return [Structure(kind, 0.0, rank=r) for r in ranks]
    if kind == "blockdense":
        return [Structure(kind, 0.0, rank=r, num_blocks=blockdense_blocks) for r in ranks]
    if kind == "blockshuffle":
        return [Structure(kind, 0.0, num_blocks=b) for b in blocks]
    return []


def ffn_model_config(hidden: int, structure: Structure, ffn_dim: int | None = None) -> ModelConfig:
    """A validated GPT-style model config whose FFN has this structure (for building one FFN block)."""
    model = ModelConfig(hidden_dim=hidden, ffn_dim=ffn_dim, num_q_heads=1, num_layers=1,
                        ffn=structure.ffn_config())
    validate(Config(model=model))  # ConfigError (a UserError) names a rank or block count that does not fit
    return model


def with_structure(model: ModelConfig, structure: Structure) -> ModelConfig:
    """A copy of a whole-model config with its FFNs replaced by ``structure`` (dense blocks kept)."""
    from dataclasses import replace

    ffn = replace(structure.ffn_config(), keep_dense_layers=list(model.ffn.keep_dense_layers),
                  premerge_max_tokens=model.ffn.premerge_max_tokens)
    out = replace(model, ffn=ffn)
    validate(Config(model=out))
    return out
