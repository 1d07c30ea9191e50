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
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from lowrank_lm.errors import ConfigError, UserError
from lowrank_lm.layers.structure import DENSE, MUP_INITS, SIZE_SETTINGS, SettingError, Structure, check_blocks

if TYPE_CHECKING:
    from lowrank_lm.config import AttnConfig, FFNConfig, ModelConfig
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


def inits() -> tuple[str, ...]:
    """Every init some structure implements (the values ``model.ffn.init`` may take), in registry order."""
    return tuple(dict.fromkeys(i for s in REGISTRY.values() for i in s.inits))


def require_linear(model: ModelConfig, what: str) -> None:
    """A UserError when ``what`` (which needs merged weights) is asked of a model with a non-linear structure."""
    for part in model.structured_parts():
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


def check(f: FFNConfig | AttnConfig, n_in: int, n_out: int) -> None:
    """Whether ``f``'s settings fit a layer ``n_in -> n_out``; raises ConfigError if not."""
    try:
        get(f.kind).check(f, n_in, n_out)
    except SettingError as e:
        raise ConfigError(str(e)) from None


def readers(setting: str) -> list[str]:
    """The kinds that read ``setting``."""
    return [k for k, s in REGISTRY.items() if setting in s.settings]


def build(in_features: int, out_features: int, cfg: FFNConfig | AttnConfig, bias: bool, std: float,
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


# --------------------------------------------------------------------------- fraction solving


def part_of(f: FFNConfig | AttnConfig) -> str:
    """``ffn`` or ``attn``: the model part (and ModelConfig attribute) whose settings ``f`` holds."""
    return f.section.removeprefix("model.")


def part_widths(model: ModelConfig, part: str) -> list[tuple[int, int]]:
    """The (in, out) widths a part's structure settings must fit, as checks and candidates read them: the FFN's
    (hidden, ffn) pair (its down layer is the transpose); attention's fused q/k/v and output projections."""
    h = model.hidden_dim
    if part == "attn":
        a = model.resolved_attn_dim
        return [(h, a + 2 * model.kv_dim), (a, h)]
    return [(h, model.resolved_ffn_dim)]


def part_fraction(model: ModelConfig, part: str = "ffn") -> float:
    """Weights of one block's structured FFN (or attention projections) relative to dense ones, counted on the
    real layers (meta)."""
    structured, dense = part_weights(model, part)
    return structured / dense


def part_weights(model: ModelConfig, part: str = "ffn") -> tuple[int, int]:
    """(structured, dense) matrix weights of one block's FFN (or attention projections), on the meta device."""
    import torch

    from lowrank_lm.model import Attention, FeedForward

    cls = Attention if part == "attn" else FeedForward
    with torch.device("meta"):
        return cls(model, dense=False).num_matrix_params(), cls(model, dense=True).num_matrix_params()


def ffn_fraction(model: ModelConfig) -> float:
    """Weights of one structured FFN block relative to the dense block, counted on the real layers (meta)."""
    return part_fraction(model, "ffn")


def rank_steps(step: int, num_blocks: int | None, limit: int) -> list[int]:
    """Ranks step, 2 step, ... up to ``limit``, multiples of ``num_blocks`` too when given."""
    unit = math.lcm(step, num_blocks) if num_blocks else step
    return list(range(unit, limit + 1, unit))


def solve(model: ModelConfig, kind: str, fraction: float, rank_multiple: int = 8,
          num_blocks: int | None = None, part: str = "ffn") -> tuple[dict[str, int], float]:
    """The settings of ``kind`` whose weight share of ``part`` is nearest ``fraction``: (settings, measured share).

    Ranks are multiples of ``rank_multiple``; ``num_blocks`` fixes the block count of a kind that also has
    a rank (else the kind's default). Shares are counted on the model's own layers on the meta device.
    """
    spec = get(kind)
    if num_blocks is None and "num_blocks" not in spec.solved:
        num_blocks = spec.defaults.get("num_blocks")
    (h, ff), *others = part_widths(model, part)
    try:
        candidates = [c for c in spec.candidates(h, ff, rank_multiple, num_blocks)  # settings that fit every layer
                      if all(c in spec.candidates(i, o, rank_multiple, num_blocks) for i, o in others)]
    except SettingError as e:  # the widths do not suit the structure at all
        raise UserError(str(e)) from None
    if not candidates:
        raise UserError(f"no {kind} setting fits widths {h} / {ff} (rank_multiple {rank_multiple}); lower "
                        "rank_multiple or choose another structure")
    best: tuple[float, dict[str, int], float] | None = None
    for cand in candidates:
        cfg = replace(getattr(model, part), kind=kind, rank=cand.get("rank"), num_blocks=cand.get("num_blocks"))
        share = part_fraction(replace(model, **{part: cfg}), part)
        gap = abs(share - fraction)
        if best is None or gap < best[0] - 1e-12:  # ties: the smaller (earlier) candidate
            best = (gap, cand, share)
    assert best is not None
    return best[1], best[2]


def check_fit(f: FFNConfig | AttnConfig, model: ModelConfig) -> None:
    """The settings of ``f`` (model.ffn or model.attn) fit every layer of its part. Raises ConfigError."""
    for n_in, n_out in part_widths(model, part_of(f)):
        check(f, n_in, n_out)


def check_saves(f: FFNConfig | AttnConfig, model: ModelConfig) -> None:
    """A structure must have fewer weights than the dense layers it replaces (a rank can fit the widths and still
    cost more: rank 128 on a 128 x 512 FFN has 1.25x the dense weights). Raises ConfigError naming the largest
    setting of the kind that does save weights. Settings must already fit (check_fit)."""
    spec, s, part = REGISTRY[f.kind], f.section, part_of(f)
    if not spec.structured:
        return
    structured, dense = part_weights(model, part)
    if structured < dense:
        return
    what = "FFN" if part == "ffn" else "attention projections"
    given = ", ".join(f"{s}.{k}={getattr(f, k)}" for k in spec.settings)
    best = _largest_saving(f, model)
    fix = (f"the largest setting that saves weights is {', '.join(f'{s}.{k}={v}' for k, v in best.items())}"
           if best else f"no {f.kind} setting saves weights at these widths; use {s}.kind={DENSE}")
    raise ConfigError(f"{given} makes the {f.kind} {what} larger than dense {what} ({structured:,} vs {dense:,} "
                      f"weights per block): it saves nothing; {fix}")


def _largest_saving(f: FFNConfig | AttnConfig, model: ModelConfig) -> dict[str, int] | None:
    """The solved settings of ``f.kind`` (every rank: step 1) with the most weights below the dense part's."""
    spec, part = REGISTRY[f.kind], part_of(f)
    fixed = f.num_blocks if "num_blocks" not in spec.solved else None
    (h, ff), *others = part_widths(model, part)
    best: tuple[int, dict[str, int]] | None = None
    for cand in spec.candidates(h, ff, 1, fixed):
        if not all(cand in spec.candidates(i, o, 1, fixed) for i, o in others):
            continue
        cfg = replace(getattr(model, part), rank=cand.get("rank", f.rank), num_blocks=cand.get("num_blocks"))
        structured, dense = part_weights(replace(model, **{part: cfg}), part)
        if structured < dense and (best is None or structured > best[0]):
            best = (structured, {k: v for k, v in cand.items() if k in spec.solved})
    return best[1] if best else None


def resolve_fraction(f: FFNConfig | AttnConfig, model: ModelConfig) -> None:
    """Replace ``f.fraction`` by the settings it solves to (validation calls this). Raises ConfigError."""
    spec, s, part = REGISTRY[f.kind], f.section, part_of(f)
    if not spec.structured:
        raise ConfigError(f"{s}.fraction={f.fraction} does not apply to {s}.kind={f.kind} (the "
                          f"baseline); remove it, or set {s}.kind to one of {', '.join(structured_kinds())}")
    assert f.fraction is not None
    if not 0 < f.fraction < 1:
        raise ConfigError(f"{s}.fraction must be between 0 and 1 (e.g. 0.32), got {f.fraction}")
    for key in spec.solved:
        if getattr(f, key) is not None:
            what = "FFN" if part == "ffn" else "attention projections"
            raise ConfigError(f"{s}.{key}={getattr(f, key)} and {s}.fraction={f.fraction} both size "
                              f"the {f.kind} {what}; remove one of them")
    fixed = f.num_blocks if "num_blocks" not in spec.solved else None
    if fixed is not None:  # a block count the user gave must fit before ranks are tried with it
        try:
            for n_in, n_out in part_widths(model, part):
                check_blocks(f, n_in, n_out)
        except SettingError as e:
            raise ConfigError(str(e)) from None
    try:
        settings, _ = solve(model, f.kind, f.fraction, num_blocks=fixed, part=part)
    except UserError as e:
        raise ConfigError(f"{s}.fraction={f.fraction}: {e}") from None
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


__all__ = ["DENSE", "HEADLINE", "MUP_INITS", "REGISTRY", "SIZE_SETTINGS", "Structure", "build", "check", "check_fit",
           "check_saves", "describe", "ffn_fraction", "get", "inits", "kinds", "linear_kinds", "module_file",
           "part_fraction", "part_of", "part_weights", "part_widths", "rank_steps", "readers", "require_linear",
           "resolve_fraction", "solve", "structured_kinds", "with_setting"]
