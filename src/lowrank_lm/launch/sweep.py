"""A sweep file and its plan: sizes x structures x parameter fractions x token budgets -> one run each.

A sweep file (YAML; its schema is :class:`lowrank_lm.launch.sweep_file.SweepFile`, read by the config's
converter, so an unknown key or a wrongly typed value is one line naming it)::

    name: cpu-mini                    # default: the file name
    out_dir: runs/sweeps/cpu-mini     # run folders go to OUT_DIR/<run name> (relative to where you run)
    base: ../cpu/tiny.yaml            # optional: the config of sizes given only as overrides
    overrides: [train.eval_interval=250]      # applied to every run
    sizes:                            # name -> config file (relative to this file), or a mapping
      s1: ../cpu/scale-1.yaml
      s2: {config: ../cpu/scale-2.yaml, overrides: [train.tokens=2500000]}
      # with FLOP budgets, {config, overrides, flops: [1e14]}: the budgets this size trains at (default all)
      # {..., seeds: [1, 2]}: this size's own seeds, replacing the sweep's (e.g. two at a µP base width)
      # (a structure may give its own seeds instead, e.g. lowrank: {fractions: [0.32], seeds: [1, 2]})
    structures:                       # name -> how the FFN is built (kind defaults to the name)
      dense: {}
      lowrank: {fractions: [0.63, 0.32]}           # the rank is solved for each size (see below)
      blockdense: {fractions: [0.63], num_blocks: 2, learning_rates: [2e-3, 4e-3]}  # its own rates
      blockshuffle: {fractions: [0.63, 0.32]}      # the block count is solved
      # or a config file per cell: {config: "../paper/structured/transformer-{size}-lowrank-{pct}.yaml",
      #                             fractions: [63, 32]}
    budgets: {tokens: [2000000, 4000000]}   # or {tokens_per_param: [20]}; omit for each size's own budget
                                      # or {flops: [1e14, 3e14]}: an IsoFLOP design (tokens = budget / FLOPs per token)
    match_dense_tokens: true          # structured runs get the dense model's token budget (the paper's rule)
    rank_multiple: 8                  # solved ranks are multiples of this
    learning_rates: [1e-3, 2e-3]      # peak learning rates (train.lr): every run once per rate
    seeds: [1, 2]                     # training seeds (train.seed): every run once per seed
    cluster: {gpus_per_node: 8, time: "24:00:00"}   # --executor submitit: the jobs' resources (docs/cluster.md)

A *fraction* is the share of a structured FFN layer's weights relative to the dense layer (the paper's
"63%" is LowRank with R = h/2: 0.625; "32%" is R = h/4: 0.3125). Written as 0.63 or 63. The rank (or
block count) whose measured fraction is nearest is chosen, counting parameters with the real layer
classes on the meta device, so the count always agrees with ``lowrank-lm info``.

Each run is named ``<size>-<structure>[-<pct>][-<budget>][-lr<LR>][-seed<S>]`` and belongs to the series
``<structure>[-<pct>]``, or ``<structure>[-<pct>]-lr<LR>`` when its structure trains at several learning
rates (a scaling law never pools rates silently); its budget and rate are the ``budget`` and ``lr`` columns.
The joint law L(N, D) is fitted per structure over every size and budget, IsoFLOP profiles only at FLOP
budgets, and the compute laws fit one curve per structure and token budget (``fit`` splits them: ``dense@t2M``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowrank_lm import sizing
from lowrank_lm.config import Config, config_to_dict, flatten
from lowrank_lm.errors import UserError
from lowrank_lm.launch.sweep_file import BudgetsEntry, SizeEntry, StructureEntry, read_sweep_file
from lowrank_lm.layers import registry
from lowrank_lm.ownership import plain_name
from lowrank_lm.resolve import load_config

if TYPE_CHECKING:  # accounting imports torch: at run time it is imported where a sweep is loaded
    from lowrank_lm.accounting import RunAccounting

FFN_KINDS = registry.kinds()
# Settings that change how a run executes but not what it computes: an existing run folder may differ
# from the plan in these and still count as the same run.
RUNTIME_KEYS = {
    "train": ("out_dir", "resume", "device", "compile", "log_interval", "eval_interval", "checkpoint_interval",
              "checkpoint_minutes", "keep_checkpoints", "wandb", "micro_batch_size", "max_bad_steps"),
    "data": ("dir", "num_workers"),
}


@dataclass
class RunSpec:
    """One run of the sweep: its names, its complete config and what accounting says it will cost."""

    name: str
    series: str
    size: str
    structure: str
    kind: str
    fraction: float | None
    """Nominal share of FFN weights per structured layer (0.63); None for dense."""
    ffn_fraction: float | None
    """Measured share with the chosen rank / block count."""
    budget: str | None
    cfg: Config
    run_dir: Path
    seed: int | None = None
    """The training seed (``train.seed``) of this run."""
    params: int = 0
    params_non_embedding: int = 0
    params_ffn: int = 0
    tokens: int = 0
    steps: int = 0
    flops: int = 0
    flops_6n: int = 0

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"

    def row(self) -> dict[str, Any]:
        """The planned part of this run's results-table row."""
        return {"name": self.name, "series": self.series, "size": self.size, "structure": self.structure,
                "fraction": self.fraction, "budget": self.budget, "params": self.params,
                "params_non_embedding": self.params_non_embedding, "params_ffn": self.params_ffn,
                "tokens": self.tokens, "steps": self.steps, "flops": self.flops, "flops_6n": self.flops_6n,
                "seed": self.seed, "out_dir": str(self.run_dir)}


@dataclass
class SweepPlan:
    """The expanded sweep: every run, in grid order, plus what was noticed while expanding it."""

    name: str
    path: Path
    out_dir: Path
    runs: list[RunSpec]
    notes: list[str] = field(default_factory=list)
    cluster: dict[str, Any] | None = None
    """The sweep file's ``cluster:`` section as written (read by lowrank_lm.launch.cluster)."""

    @property
    def results_csv(self) -> Path:
        return self.out_dir / "results.csv"

    @property
    def results_json(self) -> Path:
        return self.out_dir / "results.json"


# --------------------------------------------------------------------------- parsing helpers


def _err(path: Path, msg: str) -> UserError:
    return UserError(f"{path}: {msg}")


def _fraction(path: Path, key: str, value: float) -> float:
    f = value / 100 if value > 1 else value
    if not 0 < f < 1:
        raise _err(path, f"{key}: {value!r} is not a fraction between 0 and 1 (or a percentage)")
    return f


def pct(fraction: float) -> int:
    """The label of a fraction: 0.63 -> 63, 0.625 -> 63 (round half up, as the paper names 0.625 "63%")."""
    return math.floor(fraction * 100 + 0.5)


def lr_label(lr: float) -> str:
    """A run name's label of a learning rate: 2e-3 -> lr2e-3, 0.0015 -> lr1.5e-3, 1 -> lr1e0.

    Four significant digits in powers-of-ten form, so a name never shows float noise (0.1 * 3 -> lr3e-1).
    """
    mantissa, exponent = f"{lr:.3e}".split("e")
    return f"lr{float(mantissa):g}e{int(exponent)}"


def budget_label(tokens: int | None = None, tokens_per_param: float | None = None, flops: float | None = None) -> str:
    """A short label: t2M, t2.5M, t500k, t2.2B, tpp20, or C3e14 for a FLOP budget."""
    if flops is not None:
        mantissa, exponent = f"{flops:.2e}".split("e")
        return f"C{float(mantissa):g}e{int(exponent)}"
    if tokens_per_param is not None:
        return f"tpp{tokens_per_param:g}"
    assert tokens is not None
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if tokens >= scale:
            return f"t{tokens / scale:.4g}{unit}"
    return f"t{tokens}"


# --------------------------------------------------------------------------- structure solving


# The one solver and the share it measures live in lowrank_lm.sizing.
ffn_fraction = sizing.ffn_fraction


# --------------------------------------------------------------------------- expansion


@dataclass
class _Size:
    name: str
    config: Path | None
    overrides: list[str]
    flops: list[float] | None = None
    """The FLOP budgets this size trains at (an IsoFLOP design slides its sizes with the budget); None: all."""
    seeds: list[int | None] | None = None
    """This size's own seeds (replacing the sweep's); None: the sweep's."""


@dataclass
class _Structure:
    name: str
    kind: str | None
    fractions: list[float | None]
    num_blocks: int | None
    rank_multiple: int
    init: str | None
    template: str | None
    overrides: list[str]
    learning_rates: list[float] | None = None
    """The rates this structure trains at (its own list, else the sweep's); None: each config's own train.lr."""
    seeds: list[int | None] | None = None
    """This structure's own seeds (replacing the sweep's); None: the sweep's (or the size's)."""


@dataclass
class _Budget:
    label: str | None
    tokens: int | None = None
    tokens_per_param: float | None = None
    flops: float | None = None


def _parse_sizes(path: Path, sizes: dict[str, SizeEntry]) -> list[_Size]:
    if not sizes:
        raise _err(path, "sizes must be a mapping of size name -> config file (or {config, overrides})")
    out = []
    for name, v in sizes.items():
        if v.flops is not None and not v.flops:
            raise _err(path, f"sizes.{name}.flops must be a non-empty list of budgets from budgets.flops")
        seeds = _parse_seeds(path, v.seeds, f"sizes.{name}.seeds") if v.seeds is not None else None
        out.append(_Size(name, path.parent / v.config if v.config else None, v.overrides, v.flops, seeds))
    return out


def _parse_structures(path: Path, structures: dict[str, StructureEntry], rank_multiple: int,
                      learning_rates: list[float] | None) -> list[_Structure]:
    if not structures:
        raise _err(path, "structures must be a mapping of name -> settings, e.g. {dense: {}, lowrank: "
                         "{fractions: [0.63, 0.32]}}")
    out = []
    for name, v in structures.items():
        template = v.config
        kind = v.kind if v.kind is not None or template else (name if name in FFN_KINDS else None)
        if template is None and kind is None:
            raise _err(path, f"structures.{name}: set kind (one of {', '.join(FFN_KINDS)}) or a config template")
        fr = v.fractions
        spec = registry.get(kind) if kind is not None else None
        if spec is not None and not spec.structured and fr:
            raise _err(path, f"structures.{name}: a {kind} FFN has no fraction; remove fractions")
        if spec is not None and spec.structured and not fr:
            raise _err(path, f"structures.{name}: give fractions, e.g. [0.63, 0.32]")
        fractions: list[float | None] = [_fraction(path, f"structures.{name}.fractions", x) for x in fr] if fr \
            else [None]
        # a kind whose block count is not solved takes num_blocks, else its default, as `info` and train do
        rm = v.rank_multiple if v.rank_multiple is not None else rank_multiple
        if rm < 1:
            raise _err(path, f"structures.{name}.rank_multiple must be a positive whole number")
        own = _parse_rates(path, f"structures.{name}.learning_rates", v.learning_rates)
        rates = own if own is not None else learning_rates
        _check_no_lr_override(path, f"structures.{name}.overrides", v.overrides, rates,
                              f"structures.{name}.learning_rates" if own is not None else "learning_rates")
        seeds = _parse_seeds(path, v.seeds, f"structures.{name}.seeds") if v.seeds is not None else None
        out.append(_Structure(name, kind, fractions, v.num_blocks, rm, v.init, template, v.overrides, rates, seeds))
    return out


def _parse_budgets(path: Path, budgets: BudgetsEntry | None) -> list[_Budget]:
    if budgets is None:
        return [_Budget(None)]
    given = [(k, getattr(budgets, k)) for k in ("tokens", "tokens_per_param", "flops") if getattr(budgets, k)
             is not None]
    if len(given) != 1:
        raise _err(path, "budgets must be {tokens: [N, ...]}, {tokens_per_param: [X, ...]} or {flops: [C, ...]}")
    key, values = given[0]
    if not values:
        raise _err(path, f"budgets.{key} must be a non-empty list")
    out = []
    for v in values:
        if v <= 0:
            raise _err(path, f"budgets.{key}: {v!r} is not a positive number")
        out.append(_Budget(None, tokens=int(v)) if key == "tokens" else _Budget(None, flops=v) if key == "flops"
                   else _Budget(None, tokens_per_param=v))
    if len(out) > 1 or key == "flops":  # a label when there are budgets to tell apart (FLOP budgets: always)
        for b in out:
            b.label = budget_label(b.tokens, b.tokens_per_param, b.flops)
    return out


def _check_one_seed_list(path: Path, sizes: list[_Size], structures: list[_Structure]) -> None:
    """A run's seeds come from its size or its structure, not both (which list would win is not obvious)."""
    size = next((s for s in sizes if s.seeds is not None), None)
    st = next((s for s in structures if s.seeds is not None), None)
    if size is not None and st is not None:
        raise _err(path, f"sizes.{size.name}.seeds and structures.{st.name}.seeds both set the seeds of "
                         f"{size.name}-{st.name}'s runs; give seeds per size or per structure, not both")


def _parse_seeds(path: Path, seeds: list[int] | None, key: str = "seeds") -> list[int | None]:
    """The ``seeds`` list (distinct whole numbers), or [None]: one run per cell with the config's own seed."""
    if seeds is None:
        return [None]
    if not seeds:
        raise _err(path, f"{key} must be a non-empty list of whole numbers, e.g. [1, 2]")
    if len(set(seeds)) != len(seeds):
        raise _err(path, f"{key} has a repeated value ({seeds}); each seed once")
    return list(seeds)


def _parse_rates(path: Path, key: str, rates: list[float] | None) -> list[float] | None:
    """A ``learning_rates`` list (positive, distinct labels), or None when the file does not set it."""
    if rates is None:
        return None
    if not rates:
        raise _err(path, f"{key} must be a non-empty list of learning rates, e.g. [1e-3, 2e-3, 4e-3]; or remove it")
    seen: dict[str, float] = {}
    for r in rates:
        if not (math.isfinite(r) and r > 0):
            raise _err(path, f"{key}: {r!r} is not a positive learning rate")
        label = lr_label(r)
        if label in seen:
            raise _err(path, f"{key} has {seen[label]!r} and {r!r}, which are the same rate {label} (rates are told "
                             "apart by 4 significant digits); give each rate once")
        seen[label] = r
    return list(rates)


def _lr_override(overrides: list[str]) -> str | None:
    """The first override that sets train.lr, or None."""
    return next((o for o in overrides if o.split("=", 1)[0].strip() == "train.lr"), None)


def _check_no_lr_override(path: Path, where: str, overrides: list[str], rates: list[float] | None, by: str) -> None:
    """A train.lr override would be replaced by a learning_rates list: both at once is one line, not a guess."""
    hit = _lr_override(overrides)
    if rates is not None and hit is not None:
        raise _err(path, f"{where} has {hit!r} while {by} sets the learning rate of these runs; keep one "
                         "(a single rate is learning_rates: [X])")


def _load(path: Path, config: Path | None, overrides: list[str]) -> Config:
    try:
        return load_config(config, overrides)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def load_sweep(path: str | Path) -> SweepPlan:
    """Read a sweep file and expand it into runs (configs validated, parameters and FLOPs counted)."""
    from lowrank_lm.accounting import account

    p = Path(path)
    sweep = read_sweep_file(p)
    name = sweep.name or p.stem
    out_dir = Path(sweep.out_dir or f"runs/sweeps/{name}")
    base = p.parent / sweep.base if sweep.base else None
    overrides = sweep.overrides
    if sweep.rank_multiple < 1:
        raise _err(p, "rank_multiple must be a positive whole number")
    match_dense = sweep.match_dense_tokens if sweep.match_dense_tokens is not None else True
    sizes = _parse_sizes(p, sweep.sizes)
    learning_rates = _parse_rates(p, "learning_rates", sweep.learning_rates)
    _check_no_lr_override(p, "overrides", overrides, learning_rates, "learning_rates")
    structures = _parse_structures(p, sweep.structures, sweep.rank_multiple, learning_rates)
    _check_sizes_leave_lr(p, sweep.sizes, structures)
    budgets = _parse_budgets(p, sweep.budgets)
    seeds = _parse_seeds(p, sweep.seeds)
    _check_one_seed_list(p, sizes, structures)
    _check_flop_budgets(p, sizes, budgets, sweep.match_dense_tokens)

    runs: list[RunSpec] = []
    notes: list[str] = []
    for size in sizes:
        size_cfg = size.config or base
        if size_cfg is None:
            raise _err(p, f"sizes.{size.name} names no config file and the sweep has no base; add one of them")
        size_over = overrides + size.overrides
        # The dense twin: its parameters set tokens_per_param budgets, its budget the structured runs' one.
        dense_over = [f"model.ffn.kind={registry.DENSE}", "model.ffn.rank=", "model.ffn.num_blocks=",
                      "model.ffn.fraction=", "model.ffn.init="]
        dense_cfg = _load(p, size_cfg, size_over + dense_over)
        dense_acc = account(dense_cfg)
        for st in structures:
            for frac in st.fractions:
                label = pct(frac) if frac is not None else None
                if st.template is not None:
                    rel = st.template.format(size=size.name, structure=st.name, pct=label, fraction=frac)
                    cell_cfg_path: Path | None = p.parent / rel
                    cell_over = overrides + size.overrides + st.overrides
                else:
                    cell_cfg_path = size_cfg
                    ffn_over = [f"model.ffn.kind={st.kind}", "model.ffn.rank=", "model.ffn.num_blocks=",
                                "model.ffn.fraction=", f"model.ffn.init={st.init or ''}"]
                    assert st.kind is not None
                    if registry.get(st.kind).structured:
                        assert frac is not None
                        settings, share = sizing.solve(dense_cfg.model, st.kind, frac, st.rank_multiple,
                                                         st.num_blocks)
                        ffn_over += [f"model.ffn.{k}={v}" for k, v in settings.items()]
                        if abs(share - frac) > 0.05:
                            notes.append(f"{size.name}-{st.name}-{label}: the nearest {st.kind} setting holds "
                                         f"{share:.1%} of the FFN weights, not {frac:.0%}")
                    cell_over = size_over + ffn_over + st.overrides
                mine = [b for b in budgets
                        if size.flops is None or any(math.isclose(b.flops or 0, c) for c in size.flops)]
                rates: list[float | None] = list(st.learning_rates) if st.learning_rates else [None]
                several_rates = len(rates) > 1
                size_seeds = st.seeds or size.seeds or seeds  # (never both: _check_one_seed_list)
                for budget, lr, seed in ((b, r, sd) for b in mine for r in rates for sd in size_seeds):
                    lr_over = [f"train.lr={lr!r}"] if lr is not None else []
                    runs.append(_run_spec(p, out_dir, size.name, st.name, label, frac, budget, seed,
                                          len(size_seeds) > 1, cell_cfg_path, cell_over + lr_over, dense_acc,
                                          match_dense, lr_label(lr) if lr is not None else None, several_rates))
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
    dup = [n for n, c in seen.items() if c > 1]
    if dup:
        raise _err(p, f"two runs would share the name {dup[0]}; give sizes and structures distinct names")
    return SweepPlan(name=name, path=p, out_dir=out_dir, runs=runs, notes=notes, cluster=sweep.cluster)


def _check_sizes_leave_lr(p: Path, sizes: dict[str, SizeEntry], structures: list[_Structure]) -> None:
    """A size's train.lr override would be replaced in every structure that has learning_rates: an error."""
    swept = next((st for st in structures if st.learning_rates is not None), None)
    for name, entry in sizes.items():
        hit = _lr_override(entry.overrides)
        if swept is not None and hit is not None:
            raise _err(p, f"sizes.{name}.overrides has {hit!r} while learning_rates set the learning rate of "
                          f"structure {swept.name}; keep one (rates per structure: structures.NAME.learning_rates)")


def _check_flop_budgets(p: Path, sizes: list[_Size], budgets: list[_Budget], match_dense_tokens: bool | None) -> None:
    """Per-size FLOP lists name budgets of the file, and only FLOP budgets take them (nor match_dense_tokens)."""
    isoflop = budgets[0].flops is not None
    for size in sizes:
        if size.flops is not None and not isoflop:
            raise _err(p, f"sizes.{size.name}.flops applies to FLOP budgets only; set budgets: {{flops: [...]}} "
                          "or remove it")
        unknown = [c for c in size.flops or [] if all(not math.isclose(c, b.flops or 0) for b in budgets)]
        if unknown:
            raise _err(p, f"sizes.{size.name}.flops: {unknown[0]:g} is not one of budgets.flops")
    if isoflop and match_dense_tokens is not None:
        raise _err(p, "match_dense_tokens does not apply to FLOP budgets (every run gets the tokens its own "
                      "model needs to spend the budget); remove it")


def _run_tokens(probe: Config, budget: _Budget, dense_acc: RunAccounting, match_dense: bool) -> int:
    """The training tokens of one run: its FLOP budget, its token count, or tokens per (dense) parameter."""
    from lowrank_lm.accounting import account

    if budget.flops is not None:
        return round(budget.flops / account(probe).flops_per_token)
    if budget.tokens is not None:
        return budget.tokens
    own = account(probe)
    if budget.tokens_per_param is not None:
        basis = dense_acc.params if match_dense else own.params
        return round(budget.tokens_per_param * basis)
    return dense_acc.tokens_requested if match_dense else own.tokens_requested


def _run_spec(p: Path, out_dir: Path, size: str, structure: str, label: int | None, frac: float | None,
              budget: _Budget,
              seed: int | None, several_seeds: bool, cell_cfg_path: Path | None, cell_over: list[str],
              dense_acc: RunAccounting, match_dense: bool, lr_text: str | None = None,
              several_rates: bool = False) -> RunSpec:
    """One run of a cell at one budget, learning rate and seed: its name, folder, resolved config and counts.

    ``lr_text``: the rate's label when it comes from learning_rates (it is then in ``cell_over``); the series
    carries it only when the structure has ``several_rates``, so a fit never pools two rates in one curve.
    """
    from lowrank_lm.accounting import account

    seed_label = f"seed{seed}" if seed is not None and several_seeds else None
    run_name = "-".join(str(x) for x in (size, structure, label, budget.label, lr_text, seed_label)
                        if x is not None)
    if not plain_name(run_name) or "\0" in run_name:
        # the name is a folder under out_dir: a path would leave it (../x) or replace it (/x)
        raise _err(p, f"size {size!r} / structure {structure!r} make the run name {run_name!r}, which is not a "
                      "plain folder name; name sizes and structures without / or \\")
    # the series is the structure; the budget is a column of the data (the joint law uses all); the learning
    # rate is a column too, but different rates are different curves, so the series names a rate when there are several
    series = "-".join(str(x) for x in (structure, label, lr_text if several_rates else None) if x is not None)
    probe = _load(p, cell_cfg_path, cell_over)
    kind = probe.model.ffn.kind
    tokens = _run_tokens(probe, budget, dense_acc, match_dense)
    run_dir = out_dir / run_name
    # resume=auto: an interrupted run continues from its checkpoints when the sweep runs again
    seed_over = [f"train.seed={seed}"] if seed is not None else []
    cfg = _load(p, cell_cfg_path, [*cell_over, f"train.tokens={tokens}", "train.tokens_per_param=", *seed_over,
                                   f"train.out_dir={run_dir}", "train.resume=auto"])
    acc = account(cfg)
    if acc.steps < 1:
        raise _err(p, f"run {run_name}: {tokens} tokens is less than one step of {acc.tokens_per_step}; raise the "
                      "budget")
    return RunSpec(
        name=run_name, series=series, size=size, structure=structure, kind=kind, fraction=frac,
        ffn_fraction=ffn_fraction(cfg.model) if registry.get(kind).structured else None, budget=budget.label,
        cfg=cfg, run_dir=run_dir, seed=cfg.train.seed, params=acc.params,
        params_non_embedding=acc.params_non_embedding, params_ffn=acc.params_ffn, tokens=acc.train_tokens,
        steps=acc.steps + acc.self_guided_extra_steps, flops=acc.train_flops, flops_6n=acc.train_flops_6n)


# --------------------------------------------------------------------------- sharding and config identity


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n`` with 0 <= i < n, e.g. 0/2 and 1/2."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise UserError(f"--shard {text!r}: write it as i/n, e.g. 0/2 and 1/2") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: i must be in 0..n-1 (shards are numbered from 0), e.g. 0/{max(n, 2)}")
    return i, n


def shard_runs(runs: list[RunSpec], index: int, count: int) -> list[RunSpec]:
    """The runs of shard ``index`` of ``count``: longest-processing-time-first over planned FLOPs.

    Every shard computes the same assignment from the plan alone (not from what has finished), so
    shards started at different times never disagree; balancing by FLOPs keeps their wall times close.
    """
    load = [0] * count
    owner: dict[str, int] = {}
    for r in sorted(runs, key=lambda r: (-r.flops, r.name)):
        k = min(range(count), key=lambda j: (load[j], j))
        owner[r.name] = k
        load[k] += r.flops
    return [r for r in runs if owner[r.name] == index]


def result_affecting(cfg: Config) -> dict[str, Any]:
    """The config as plain data without the runtime-only keys (see RUNTIME_KEYS)."""
    d = config_to_dict(cfg)
    for section, keys in RUNTIME_KEYS.items():
        for k in keys:
            d[section].pop(k, None)
    return d


def config_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring runtime-only keys."""
    fa, fb = flatten(result_affecting(a)), flatten(result_affecting(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
