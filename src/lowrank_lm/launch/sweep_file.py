"""The sweep file's schema: dataclasses read as configs are (OmegaConf, :func:`lowrank_lm.config.from_mapping`).

A sweep file is checked like a config: every key is known (a typo gets one line naming it, with a
did-you-mean) and every value has its field's type. What the values must mean together (a structure with
fractions, budgets of one kind, ...) is checked where the sweep is expanded (:mod:`lowrank_lm.launch.sweep`),
whose module docstring shows a whole file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from lowrank_lm.config import from_mapping
from lowrank_lm.errors import UserError
from lowrank_lm.layers.registry import StructureInit, StructureKind


@dataclass
class SizeEntry:
    """One model size (``sizes.<name>``); a plain string is short for ``{config: FILE}``."""

    config: Optional[str] = None
    """Config file of this size, relative to the sweep file; empty: the sweep's base."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides of this size, after the sweep's own."""
    flops: Optional[list[float]] = None
    """With FLOP budgets: the budgets this size trains at (each one of budgets.flops); empty: all of them."""
    seeds: Optional[list[int]] = None
    """Training seeds of this size's runs, replacing the sweep's seeds (e.g. a second seed at a µP base width
    only); empty: the sweep's."""


@dataclass
class StructureEntry:
    """How one series builds its FFN (``structures.<name>``)."""

    kind: Optional[StructureKind] = None
    """The FFN structure; empty: the entry's name, when that is a kind."""
    fractions: Optional[list[float]] = None
    """Shares of the dense FFN's weights, 0.63 or 63; one series each (structured kinds only)."""
    num_blocks: Optional[int] = None
    """Fixed block count of a kind that also has a rank (the rank is solved)."""
    rank_multiple: Optional[int] = None
    """Solved ranks are multiples of this; empty: the sweep's rank_multiple."""
    init: Optional[StructureInit] = None
    """FFN init; empty: the kind's default."""
    config: Optional[str] = None
    """A config file per cell instead of a kind: a template with {size}, {structure}, {pct} and {fraction}."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides of this structure's runs, after the size's."""
    learning_rates: Optional[list[float]] = None
    """Peak learning rates (train.lr) of this structure's runs, each run once per rate; replaces the sweep's
    learning_rates (a µP study tunes one grid per structure); empty: the sweep's."""
    seeds: Optional[list[int]] = None
    """Training seeds of this structure's runs, replacing the sweep's (e.g. a second seed for the two series a
    study compares most closely); not beside a size's own seeds; empty: the sweep's."""


@dataclass
class BudgetsEntry:
    """The token budgets of every cell: exactly one of the three lists."""

    tokens: Optional[list[float]] = None
    """Training tokens per run."""
    tokens_per_param: Optional[list[float]] = None
    """Training tokens per parameter (of the dense twin, with match_dense_tokens)."""
    flops: Optional[list[float]] = None
    """Training FLOPs per run: an IsoFLOP design (tokens = budget / FLOPs per token)."""


@dataclass
class SweepFile:
    """A sweep file as written: sizes x structures x fractions x budgets (x learning rates x seeds)."""

    name: Optional[str] = None
    """The sweep's name; empty: the file name."""
    description: Optional[str] = None
    """Free text."""
    out_dir: Optional[str] = None
    """Folder of the run folders and results table; empty: runs/sweeps/<name>."""
    base: Optional[str] = None
    """Config file of sizes given only as overrides, relative to the sweep file."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides of every run."""
    sizes: dict[str, SizeEntry] = field(default_factory=dict)
    """Size name -> its config (a file name, or a mapping)."""
    structures: dict[str, StructureEntry] = field(default_factory=dict)
    """Series name -> how its FFN is built."""
    budgets: Optional[BudgetsEntry] = None
    """Token budgets; empty: each size's own train.tokens."""
    match_dense_tokens: Optional[bool] = None
    """Structured runs get the dense twin's token budget (the paper's rule); empty: true."""
    rank_multiple: int = 8
    """Solved ranks are multiples of this."""
    seeds: Optional[list[int]] = None
    """Training seeds (train.seed): every run once per seed."""
    learning_rates: Optional[list[float]] = None
    """Peak learning rates (train.lr): every run once per rate (run names get -lr2e-3); empty: each config's own."""
    cluster: Optional[dict[str, Any]] = None
    """The submitit executor's resources, read by :mod:`lowrank_lm.launch.cluster`."""


def read_sweep_file(path: Path) -> SweepFile:
    """Read and type-check the sweep file ``path``; a problem is one UserError line that starts with the path."""
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}; give a YAML sweep file (see configs/sweeps/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path}: malformed YAML; fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a sweep file is a mapping with sizes, structures and (optionally) budgets")
    sizes = raw.get("sizes")
    if isinstance(sizes, dict):  # a size given as a file name is short for {config: FILE}
        raw["sizes"] = {k: {"config": v} if isinstance(v, str) else v for k, v in sizes.items()}
    try:
        return from_mapping(SweepFile, raw, unknown="unknown key")
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
