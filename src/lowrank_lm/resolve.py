"""Loading a config: read, validate, resolve. What the structures' settings mean is settled here.

The config module knows no structure: a kind and an init are names there. Loading is three steps:

1. read (:func:`lowrank_lm.config.read_config`): the YAML file, its ``base:`` chain and the overrides, each
   value checked against its field's type;
2. validate what needs no structure (:func:`lowrank_lm.config.validate`: shapes, recipe, data), which
   changes nothing;
3. resolve (:func:`resolve`) into a new :class:`Config`: each structure's kind and init known to the registry,
   its settings ones the kind reads that fit the widths and save weights, a ``fraction`` replaced by the
   settings it solves to (:mod:`lowrank_lm.sizing`), the kind's default init (or µP's) filled in; then what
   combines the structures with the rest (pre-merge, self-guided training) is checked.

A resolved config resolves to an equal one, so a run's saved ``config.yaml`` reloads to the same model.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from lowrank_lm import sizing
from lowrank_lm.config import (
    AttnConfig,
    Config,
    FFNConfig,
    ModelConfig,
    StructureConfig,
    read_config,
    read_dict,
    validate,
)
from lowrank_lm.errors import ConfigError
from lowrank_lm.layers import registry

_Part = TypeVar("_Part", FFNConfig, AttnConfig)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate and resolve it.
    Raises ConfigError (one line naming the key and the fix)."""
    return resolve(read_config(path, overrides))


def config_from_dict(raw: dict, overrides: list[str] | None = None) -> Config:
    """A validated, resolved :class:`Config` from a raw mapping (a config file's contents) and ``key=value``
    overrides."""
    return resolve(read_dict(raw, overrides))


def resolve(cfg: Config) -> Config:
    """``cfg`` validated, with its structures resolved, as a new Config (``cfg`` is left as it was).

    The structure-free checks run first: sizing a structure needs sound widths. Raises ConfigError.
    """
    validate(cfg)
    out = copy.deepcopy(cfg)
    m = out.model
    out.model = replace(m, ffn=_resolve_part(m.ffn, m), attn=_resolve_part(m.attn, m))
    _check_premerge(out.model)
    _check_self_guided(out)
    return out


def _check_name(value: str, choices: Sequence[str], key: str) -> None:
    """``value`` is one of ``choices``, or a ConfigError naming ``key`` with a did-you-mean."""
    if value not in choices:
        hint = difflib.get_close_matches(str(value), list(choices), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}{extra}")


def _check_applicable(f: StructureConfig) -> None:
    """A setting the kind does not read is an error naming what the kind does read."""
    spec, s = registry.get(f.kind), f.section
    uses = spec.settings
    for key in registry.SIZE_SETTINGS:
        if getattr(f, key) is not None and key not in uses:
            reads = f"reads {' and '.join(f'{s}.{u}' for u in uses)}" if uses else "has no size setting"
            raise ConfigError(f"{s}.{key}={getattr(f, key)} does not apply to {s}.kind={f.kind} "
                              f"(it {reads}); remove it, or set {s}.kind to {' or '.join(registry.readers(key))}")
    if f.init is not None and f.init not in spec.inits:
        raise ConfigError(f"{s}.init={f.init} does not apply to {s}.kind={f.kind}; "
                          f"use {' or '.join(spec.inits)} (or leave it empty for {spec.default_init})")


def _init(f: StructureConfig, m: ModelConfig) -> str:
    """The init ``f`` resolves to: its own, else µP's under model.parametrization=mup, else the kind's default."""
    if m.parametrization != "mup":
        return f.init or registry.get(f.kind).default_init
    init = f.init or "mup"
    if init not in registry.MUP_INITS:
        raise ConfigError(f"{f.section}.init={init} does not apply under model.parametrization=mup (it draws "
                          f"every factor at its own muP scale); use {' or '.join(registry.MUP_INITS)}, or "
                          "leave it empty")
    return init


def _resolve_part(f: _Part, m: ModelConfig) -> _Part:
    """model.ffn or model.attn resolved: names known, a fraction solved, settings that apply, fit and save."""
    _check_name(f.kind, registry.kinds(), f"{f.section}.kind")
    if f.init is not None:
        _check_name(f.init, registry.inits(), f"{f.section}.init")
    if f.fraction is not None:
        _check_applicable(f)  # a setting the kind does not read is named before the fraction is solved
        solved = sizing.solve_fraction(f, m)  # the resolved config names the settings instead of the fraction
        f = replace(f, rank=solved.get("rank", f.rank), num_blocks=solved.get("num_blocks", f.num_blocks),
                    fraction=None)
    sized = sizing.with_part(m, f)  # the model as these settings make it, for counting weights
    sizing.check_fit(f, sized)
    _check_applicable(f)
    sizing.check_saves(f, sized)
    return replace(f, init=_init(f, m))


def _check_premerge(m: ModelConfig) -> None:
    """model.ffn.premerge_max_tokens needs a structure to merge, and every structure merged must be linear."""
    f = m.ffn
    if f.premerge_max_tokens is None:
        return
    if not registry.structured_parts(m):
        raise ConfigError(f"model.ffn.premerge_max_tokens does not apply to model.ffn.kind={f.kind} with "
                          f"model.attn.kind={m.attn.kind} (nothing to merge); remove it, or set a structured "
                          "model.ffn.kind")
    for part in registry.structured_parts(m):
        if not registry.get(part.kind).linear:
            raise ConfigError(f"model.ffn.premerge_max_tokens does not apply to {part.section}.kind={part.kind} "
                              f"(not linear: no merged weight); remove it, or use one of "
                              f"{', '.join(registry.linear_kinds())}")


def _check_self_guided(cfg: Config) -> None:
    """Self-guided training needs a structure to guide, and its guides start at merged weights (linear kinds)."""
    if not cfg.train.self_guided.enabled:
        return
    parts = registry.structured_parts(cfg.model)
    if not parts:
        raise ConfigError("train.self_guided needs a structured FFN or attention; set model.ffn.kind or "
                          f"model.attn.kind ({', '.join(registry.structured_kinds())}) or disable self-guided "
                          "training")
    for part in parts:
        if not registry.get(part.kind).linear:
            raise ConfigError(f"train.self_guided starts its dense guide at the merged weight, and "
                              f"{part.section}.kind={part.kind} is not linear (no merged weight); use one of "
                              f"{', '.join(registry.linear_kinds())} or disable self-guided training")
