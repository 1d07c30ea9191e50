"""Sizing a structure: the weights of a model part counted on its own layers, and the settings of a fraction.

A part is one block's FFN (up, the SwiGLU gate, down) or its attention projections (the fused q/k/v and the
output). Its weights are counted by building each of its layers alone on the meta device from the structure's
declaration in the registry (:mod:`lowrank_lm.layers.registry`), as the model builds them, so a count is
exact for every structure and costs no memory. :func:`solve` picks the setting of a kind whose share of the
dense part's weights is nearest a target; :mod:`lowrank_lm.resolve` uses it for ``model.ffn.fraction`` and
``model.attn.fraction``, and the sweep and the benchmarks for theirs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch

from lowrank_lm.config import AttnConfig, ModelConfig, StructureConfig
from lowrank_lm.errors import ConfigError, UserError
from lowrank_lm.layers import registry
from lowrank_lm.layers.structure import SettingError, check_blocks

Part = Literal["ffn", "attn"]


def part_of(f: StructureConfig) -> Part:
    """``ffn`` or ``attn``: the model part (and ModelConfig attribute) whose settings ``f`` holds."""
    return "attn" if f.section == "model.attn" else "ffn"


def with_part(model: ModelConfig, f: StructureConfig) -> ModelConfig:
    """A copy of ``model`` with ``f`` as its model.ffn or model.attn section (which one: ``f``'s own)."""
    return replace(model, attn=f) if isinstance(f, AttnConfig) else replace(model, ffn=f)


def part_widths(model: ModelConfig, part: str) -> list[tuple[int, int]]:
    """The (in, out) widths a part's structure settings must fit, as checks and candidates read them: the FFN's
    (hidden, ffn) pair (its down layer is the transpose); attention's fused q/k/v and output projections."""
    h = model.hidden_dim
    if part == "attn":
        a = model.resolved_attn_dim
        return [(h, a + 2 * model.kv_dim), (a, h)]
    return [(h, model.resolved_ffn_dim)]


def part_layers(model: ModelConfig, part: str) -> list[tuple[int, int]]:
    """The (in, out) widths of every linear layer of one block's part, as the model builds them: the FFN's up,
    gate (SwiGLU only) and down layers; attention's fused q/k/v and output projections."""
    if part == "attn":
        return part_widths(model, "attn")
    h, f = model.hidden_dim, model.resolved_ffn_dim
    return [(h, f)] * (2 if model.activation == "swiglu" else 1) + [(f, h)]


def _layer_weights(kind: str, n_in: int, n_out: int, settings: StructureConfig, bias: bool) -> int:
    """Matrix weights (biases excluded) of one ``kind`` layer ``n_in -> n_out``, built alone (meta device)."""
    with torch.device("meta"):
        return registry.get(kind).build(n_in, n_out, settings, bias).num_matrix_params()


def part_weights(model: ModelConfig, part: str = "ffn") -> tuple[int, int]:
    """(structured, dense) matrix weights of one block's FFN (or attention projections), counted on its layers
    built alone on the meta device."""
    settings: StructureConfig = getattr(model, part)
    layers = part_layers(model, part)
    structured = sum(_layer_weights(settings.kind, i, o, settings, model.bias) for i, o in layers)
    dense = sum(_layer_weights(registry.DENSE, i, o, settings, model.bias) for i, o in layers)
    return structured, dense


def part_fraction(model: ModelConfig, part: str = "ffn") -> float:
    """Weights of one block's structured FFN (or attention projections) relative to dense ones."""
    structured, dense = part_weights(model, part)
    return structured / dense


def ffn_fraction(model: ModelConfig) -> float:
    """Weights of one structured FFN block relative to the dense block."""
    return part_fraction(model, "ffn")


def _fitting(spec: registry.Structure, model: ModelConfig, part: str, step: int, blocks: int | None
             ) -> list[dict[str, int]]:
    """The candidate settings of ``spec`` (ranks multiples of ``step``) that fit every layer of ``part``."""
    (h, ff), *others = part_widths(model, part)
    return [c for c in spec.candidates(h, ff, step, blocks)
            if all(c in spec.candidates(i, o, step, blocks) for i, o in others)]


def solve(model: ModelConfig, kind: str, fraction: float, rank_multiple: int = 8,
          num_blocks: int | None = None, part: str = "ffn") -> tuple[dict[str, int], float]:
    """The settings of ``kind`` whose weight share of ``part`` is nearest ``fraction``: (settings, measured share).

    Ranks are multiples of ``rank_multiple``; ``num_blocks`` fixes the block count of a kind that also has
    a rank (else the kind's default). Shares are counted on the part's layers on the meta device.
    """
    spec = registry.get(kind)
    if num_blocks is None and "num_blocks" not in spec.solved:
        num_blocks = spec.defaults.get("num_blocks")
    try:
        candidates = _fitting(spec, model, part, rank_multiple, num_blocks)
    except SettingError as e:  # the widths do not suit the structure at all
        raise UserError(str(e)) from None
    if not candidates:
        h, ff = part_widths(model, part)[0]
        raise UserError(f"no {kind} setting fits widths {h} / {ff} (rank_multiple {rank_multiple}); lower "
                        "rank_multiple or choose another structure")
    best: tuple[float, dict[str, int], float] | None = None
    for cand in candidates:
        cfg = replace(getattr(model, part), kind=kind, rank=cand.get("rank"), num_blocks=cand.get("num_blocks"))
        share = part_fraction(with_part(model, cfg), part)
        gap = abs(share - fraction)
        if best is None or gap < best[0] - 1e-12:  # ties: the smaller (earlier) candidate
            best = (gap, cand, share)
    assert best is not None
    return best[1], best[2]


def check_fit(f: StructureConfig, model: ModelConfig) -> None:
    """The settings of ``f`` (model.ffn or model.attn) fit every layer of its part. Raises ConfigError."""
    for n_in, n_out in part_widths(model, part_of(f)):
        registry.check(f, n_in, n_out)


def _what(part: str) -> str:
    return "FFN" if part == "ffn" else "attention projections"


def check_saves(f: StructureConfig, model: ModelConfig) -> None:
    """A structure must have fewer weights than the dense layers it replaces (a rank can fit the widths and still
    cost more: rank 128 on a 128 x 512 FFN has 1.25x the dense weights). Raises ConfigError naming the largest
    setting of the kind that does save weights. Settings must already fit (check_fit); ``f`` is ``model``'s."""
    spec, s, part = registry.get(f.kind), f.section, part_of(f)
    if not spec.structured:
        return
    structured, dense = part_weights(model, part)
    if structured < dense:
        return
    given = ", ".join(f"{s}.{k}={getattr(f, k)}" for k in spec.settings)
    best = _largest_saving(f, model)
    fix = (f"the largest setting that saves weights is {', '.join(f'{s}.{k}={v}' for k, v in best.items())}"
           if best else f"no {f.kind} setting saves weights at these widths; use {s}.kind={registry.DENSE}")
    raise ConfigError(f"{given} makes the {f.kind} {_what(part)} larger than dense {_what(part)} ({structured:,} "
                      f"vs {dense:,} weights per block): it saves nothing; {fix}")


def _largest_saving(f: StructureConfig, model: ModelConfig) -> dict[str, int] | None:
    """The solved settings of ``f.kind`` (every rank: step 1) with the most weights below the dense part's."""
    spec, part = registry.get(f.kind), part_of(f)
    fixed = f.num_blocks if "num_blocks" not in spec.solved else None
    best: tuple[int, dict[str, int]] | None = None
    for cand in _fitting(spec, model, part, 1, fixed):
        cfg = replace(f, rank=cand.get("rank", f.rank), num_blocks=cand.get("num_blocks"))
        structured, dense = part_weights(with_part(model, cfg), part)
        if structured < dense and (best is None or structured > best[0]):
            best = (structured, {k: v for k, v in cand.items() if k in spec.solved})
    return best[1] if best else None


def solve_fraction(f: StructureConfig, model: ModelConfig) -> dict[str, int]:
    """The settings ``f.fraction`` solves to (its kind's solved settings, e.g. ``{"rank": 64}``), for the
    resolved config to name instead of the fraction. Changes nothing; raises ConfigError."""
    spec, s, part = registry.get(f.kind), f.section, part_of(f)
    if not spec.structured:
        raise ConfigError(f"{s}.fraction={f.fraction} does not apply to {s}.kind={f.kind} (the "
                          f"baseline); remove it, or set {s}.kind to one of {', '.join(registry.structured_kinds())}")
    assert f.fraction is not None
    if not 0 < f.fraction < 1:
        raise ConfigError(f"{s}.fraction must be between 0 and 1 (e.g. 0.32), got {f.fraction}")
    for key in spec.solved:
        if getattr(f, key) is not None:
            raise ConfigError(f"{s}.{key}={getattr(f, key)} and {s}.fraction={f.fraction} both size "
                              f"the {f.kind} {_what(part)}; remove one of them")
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
    return settings
