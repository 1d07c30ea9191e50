"""The structure registry: every FFN parametrisation, declared once by its own module under ``layers/``.

A structure module ends with a :class:`Structure` ``SPEC`` that says what the rest of the toolkit needs:
its name, the FFN settings it reads, the inits its layer implements (the first is the paper's default),
how to build the layer, which settings are valid for a model's widths, and the candidate settings from
which :func:`lowrank_lm.sizing.solve` picks the one nearest a target fraction of the dense FFN's weights.
Resolving a config (:mod:`lowrank_lm.resolve`), sizing, ``info``, ``sweep``, ``bench`` and the CLI defaults
read this registry, so adding a structure is one new module plus its line in :data:`_MODULES`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from lowrank_lm.errors import ConfigError, UserError
from lowrank_lm.layers.structure import DENSE, MUP_INITS, SIZE_SETTINGS, SettingError, Structure

if TYPE_CHECKING:
    from lowrank_lm.config import ModelConfig, StructureConfig
    from lowrank_lm.layers.base import StructuredLinear

# One module per structure, in the order the CLI and error messages list them.
_MODULES = ("dense", "lowrank", "blockshuffle", "blockdense", "btt", "cola")

HEADLINE = "lowrank"
"""The structure of the paper's headline comparison, at R = hidden / 4 (~32% of the FFN weights): the one
``lowrank-lm demo`` trains beside the dense baseline."""


def _load() -> dict[str, ModuleType]:
    modules = [importlib.import_module(f"lowrank_lm.layers.{m}") for m in _MODULES]
    return {m.SPEC.name: m for m in modules}


_DECLARED = _load()
REGISTRY: dict[str, Structure] = {k: m.SPEC for k, m in _DECLARED.items()}


def kinds() -> tuple[str, ...]:
    """Every registered ``model.ffn.kind``, dense first."""
    return tuple(REGISTRY)


def structured_kinds() -> tuple[str, ...]:
    """Every kind but the dense baseline."""
    return tuple(k for k, s in REGISTRY.items() if s.structured)


def linear_kinds() -> tuple[str, ...]:
    """The structured kinds that are linear maps, i.e. have an exact merged weight (pre-merge, guides, merge)."""
    return tuple(k for k, s in REGISTRY.items() if s.structured and s.linear)


def colormaps() -> dict[str, str]:
    """Each structure's colour family in figures (the ``families`` of :mod:`lowrank_lm.plotting`)."""
    return {k: s.colormap for k, s in REGISTRY.items() if s.colormap}


def inits() -> tuple[str, ...]:
    """Every init some structure implements (the values ``model.ffn.init`` may take), in registry order."""
    return tuple(dict.fromkeys(i for s in REGISTRY.values() for i in s.inits))


# The kinds and inits as types, for a schema that checks them on reading (a sweep file's structures); the config
# itself holds them as plain names, checked when it is resolved (lowrank_lm.resolve).
StructureKind = Literal[kinds()]  # type: ignore[valid-type]
StructureInit = Literal[inits()]  # type: ignore[valid-type]


def structured_parts(model: ModelConfig) -> list[StructureConfig]:
    """The FFN and attention sections of ``model`` whose kind is structured (pre-merge and guides act on these)."""
    return [part for part in (model.ffn, model.attn) if get(part.kind).structured]


def all_linear(model: ModelConfig) -> bool:
    """Whether every structured linear of ``model`` has an exact merged weight (pre-merge, guides, merge)."""
    return all(get(part.kind).linear for part in structured_parts(model))


def require_linear(model: ModelConfig, what: str) -> None:
    """A UserError when ``what`` (which needs merged weights) is asked of a model with a non-linear structure."""
    for part in structured_parts(model):
        if not get(part.kind).linear:
            raise UserError(f"{what} needs linear structures with a merged weight, and {part.section}.kind={part.kind} "
                            f"is not linear; use one of {', '.join(linear_kinds())} for it")


def get(kind: str) -> Structure:
    """The structure named ``kind``; a UserError listing the known kinds otherwise."""
    try:
        return REGISTRY[kind]
    except KeyError:
        raise UserError(f"unknown FFN kind {kind!r}; use one of {', '.join(REGISTRY)}") from None


def module_file(kind: str) -> Path:
    """The source file of the module that declares ``kind`` (a remote-code export copies it)."""
    get(kind)
    return Path(str(_DECLARED[kind].__file__))


def check(f: StructureConfig, n_in: int, n_out: int) -> None:
    """Whether ``f``'s settings fit a layer ``n_in -> n_out``; raises ConfigError if not."""
    try:
        get(f.kind).check(f, n_in, n_out)
    except SettingError as e:
        raise ConfigError(str(e)) from None


def readers(setting: str) -> list[str]:
    """The kinds that read ``setting``."""
    return [k for k, s in REGISTRY.items() if setting in s.settings]


def build(in_features: int, out_features: int, cfg: StructureConfig, bias: bool, std: float,
          dense: bool = False, output_side: bool = False) -> StructuredLinear:
    """The layer of ``cfg.kind`` (``dense=True`` forces dense), initialised with ``cfg.init`` or its default.

    ``output_side``: the layer ends a residual branch (FFN down, attention output), the one whose last factor
    the ``zero_out`` init zeroes; elsewhere ``zero_out`` is ``mup``.
    """
    spec = REGISTRY[DENSE if dense else cfg.kind]
    layer = spec.build(in_features, out_features, cfg, bias)
    init = spec.default_init if dense else (cfg.init or spec.default_init)
    if init in MUP_INITS:  # drawn from the factors the structure declares, whatever the structure
        layer.mup_init_(zero_last=init == "zero_out" and output_side)
    else:
        layer.reset_parameters(std, init)
    return layer


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
        blocks_of: dict[str, int] = {"num_blocks": b} if "num_blocks" in spec.settings and b is not None else {}
        return [{"rank": r, **blocks_of} for r in ranks]
    if "num_blocks" in spec.settings:
        return [{"num_blocks": b} for b in blocks]
    return []


__all__ = ["DENSE", "HEADLINE", "MUP_INITS", "REGISTRY", "SIZE_SETTINGS", "Structure", "StructureInit",
           "StructureKind", "all_linear", "build", "check", "describe", "get", "inits", "kinds", "linear_kinds",
           "module_file", "readers", "require_linear", "structured_kinds", "structured_parts", "with_setting"]
