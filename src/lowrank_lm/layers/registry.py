"""The structure registry: every FFN parametrisation, declared once by its own module under ``layers/``.

A structure module ends with a :class:`Structure` ``SPEC`` that says what the rest of the toolkit needs:
its name, the FFN settings it reads, the inits its layer implements (the first is the paper's default),
how to build the layer, which settings are valid for a model's widths, and the candidate settings from
which :func:`solve` picks the one nearest a target fraction of the dense FFN's weights. Config
validation, ``info``, ``sweep``, ``bench`` and the CLI defaults read this registry, so adding a
structure is one new module plus its line in :data:`_MODULES`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import replace
from typing import TYPE_CHECKING

from lowrank_lm.errors import ConfigError, UserError
from lowrank_lm.layers.structure import DENSE, SIZE_SETTINGS, Structure, check_blocks

if TYPE_CHECKING:
    from lowrank_lm.config import FFNConfig, ModelConfig
    from lowrank_lm.layers.base import StructuredLinear

# One module per structure, in the order the CLI and error messages list them.
_MODULES = ("dense", "lowrank", "blockshuffle", "blockdense", "btt", "cola")


def _load() -> dict[str, Structure]:
    specs = [importlib.import_module(f"lowrank_lm.layers.{m}").SPEC for m in _MODULES]
    return {s.name: s for s in specs}


REGISTRY: dict[str, Structure] = _load()


def kinds() -> tuple[str, ...]:
    """Every registered ``model.ffn.kind``, dense first."""
    return tuple(REGISTRY)


def structured_kinds() -> tuple[str, ...]:
    """Every kind but the dense baseline."""
    return tuple(k for k, s in REGISTRY.items() if s.structured)


def linear_kinds() -> tuple[str, ...]:
    """The structured kinds that are linear maps, i.e. have an exact merged weight (pre-merge, guides, merge)."""
    return tuple(k for k, s in REGISTRY.items() if s.structured and s.linear)


def inits() -> tuple[str, ...]:
    """Every init some structure implements (the values ``model.ffn.init`` may take), in registry order."""
    return tuple(dict.fromkeys(i for s in REGISTRY.values() for i in s.inits))


def require_linear(kind: str, what: str) -> None:
    """A UserError when ``what`` (which needs a merged weight) is asked of a non-linear kind."""
    if not get(kind).linear:
        raise UserError(f"{what} needs a linear FFN structure with a merged weight, and model.ffn.kind={kind} is "
                        f"not linear; use one of {', '.join(linear_kinds())} for it")


def get(kind: str) -> Structure:
    """The structure named ``kind``; a UserError listing the known kinds otherwise."""
    try:
        return REGISTRY[kind]
    except KeyError:
        raise UserError(f"unknown FFN kind {kind!r}; use one of {', '.join(REGISTRY)}") from None


def readers(setting: str) -> list[str]:
    """The kinds that read ``setting``."""
    return [k for k, s in REGISTRY.items() if setting in s.settings]


def build(in_features: int, out_features: int, cfg: FFNConfig, bias: bool, std: float,
          dense: bool = False) -> StructuredLinear:
    """The layer of ``cfg.kind`` (``dense=True`` forces dense), initialised with ``cfg.init`` or its default."""
    spec = REGISTRY[DENSE if dense else cfg.kind]
    layer = spec.build(in_features, out_features, cfg, bias)
    init = spec.default_init if dense else (cfg.init or spec.default_init)
    layer.reset_parameters(std, init)
    if cfg.premerge_max_tokens and spec.structured:
        layer.premerge_max_tokens = cfg.premerge_max_tokens
    return layer


# --------------------------------------------------------------------------- fraction solving


def ffn_fraction(model: ModelConfig) -> float:
    """Weights of one structured FFN block relative to the dense block, counted on the real layers (meta)."""
    import torch

    from lowrank_lm.layers.base import StructuredLinear
    from lowrank_lm.model import FeedForward

    with torch.device("meta"):
        structured = FeedForward(model, dense=False)
        dense = FeedForward(model, dense=True)

    def count(m: torch.nn.Module) -> int:
        return sum(x.num_matrix_params() for x in m.modules() if isinstance(x, StructuredLinear))

    return count(structured) / count(dense)


def rank_steps(step: int, num_blocks: int | None, limit: int) -> list[int]:
    """Ranks step, 2 step, ... up to ``limit``, multiples of ``num_blocks`` too when given."""
    unit = math.lcm(step, num_blocks) if num_blocks else step
    return list(range(unit, limit + 1, unit))


def solve(model: ModelConfig, kind: str, fraction: float, rank_multiple: int = 8,
          num_blocks: int | None = None) -> tuple[dict[str, int], float]:
    """The settings of ``kind`` whose FFN weight share is nearest ``fraction``: (settings, measured share).

    Ranks are multiples of ``rank_multiple``; ``num_blocks`` fixes the block count of a kind that also has
    a rank (else the kind's default). Shares are counted on the model's own FFN layers on the meta device.
    """
    spec = get(kind)
    h, ff = model.hidden_dim, model.resolved_ffn_dim
    if num_blocks is None and "num_blocks" not in spec.solved:
        num_blocks = spec.defaults.get("num_blocks")
    candidates = spec.candidates(h, ff, rank_multiple, num_blocks)
    if not candidates:
        raise UserError(f"no {kind} setting fits width {h} / FFN {ff} (rank_multiple {rank_multiple}); lower "
                        "rank_multiple or choose another structure")
    best: tuple[float, dict[str, int], float] | None = None
    for cand in candidates:
        ffn = replace(model.ffn, kind=kind, rank=cand.get("rank"), num_blocks=cand.get("num_blocks"))
        share = ffn_fraction(replace(model, ffn=ffn))
        gap = abs(share - fraction)
        if best is None or gap < best[0] - 1e-12:  # ties: the smaller (earlier) candidate
            best = (gap, cand, share)
    assert best is not None
    return best[1], best[2]


def resolve_fraction(f: FFNConfig, model: ModelConfig) -> None:
    """Replace ``model.ffn.fraction`` by the settings it solves to (validation calls this). Raises ConfigError."""
    spec = REGISTRY[f.kind]
    if not spec.structured:
        raise ConfigError(f"model.ffn.fraction={f.fraction} does not apply to model.ffn.kind={f.kind} (the "
                          f"baseline); remove it, or set model.ffn.kind to one of {', '.join(structured_kinds())}")
    assert f.fraction is not None
    if not 0 < f.fraction < 1:
        raise ConfigError(f"model.ffn.fraction must be between 0 and 1 (e.g. 0.32), got {f.fraction}")
    for key in spec.solved:
        if getattr(f, key) is not None:
            raise ConfigError(f"model.ffn.{key}={getattr(f, key)} and model.ffn.fraction={f.fraction} both size "
                              f"the {f.kind} FFN; remove one of them")
    fixed = f.num_blocks if "num_blocks" not in spec.solved else None
    if fixed is not None:  # a block count the user gave must fit before ranks are tried with it
        check_blocks(f, model.hidden_dim, model.resolved_ffn_dim)
    try:
        settings, _ = solve(model, f.kind, f.fraction, num_blocks=fixed)
    except UserError as e:
        raise ConfigError(f"model.ffn.fraction={f.fraction}: {e}") from None
    for key, value in settings.items():
        setattr(f, key, value)
    f.fraction = None  # the resolved config names the settings themselves, so it reloads unchanged


def describe(kind: str, rank: int | None, num_blocks: int | None) -> str:
    """``R=..., B=...`` for the settings a kind reads (empty for dense)."""
    bits = {"rank": f"R={rank}" if rank else "", "num_blocks": f"B={num_blocks}" if num_blocks else ""}
    return ", ".join(bits[k] for k in get(kind).settings if bits[k])


def with_setting(kind: str, ranks: list[int], blocks: list[int], fixed_blocks: int | None = None
                 ) -> list[dict[str, int]]:
    """Explicit settings of ``kind``: one per rank if it reads a rank (block count fixed), else one per block count."""
    spec = get(kind)
    if "rank" in spec.settings:
        b = fixed_blocks if fixed_blocks is not None else spec.defaults.get("num_blocks")
        return [{"rank": r, **({"num_blocks": b} if "num_blocks" in spec.settings else {})} for r in ranks]
    if "num_blocks" in spec.settings:
        return [{"num_blocks": b} for b in blocks]
    return []


__all__ = ["DENSE", "REGISTRY", "SIZE_SETTINGS", "Structure", "build", "describe", "ffn_fraction", "get", "inits",
           "kinds", "linear_kinds", "rank_steps", "readers", "require_linear", "resolve_fraction", "solve",
           "structured_kinds", "with_setting"]
