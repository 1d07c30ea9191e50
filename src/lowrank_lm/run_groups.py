"""Runs grouped by configuration (everything but the seed) for ``compare``: each group's mean validation loss
with a 95% interval over its seeds, the pooled seed-to-seed noise, and each group's difference to a baseline
group of the same shape and token budget.

Why: one seed is not a measurement of a structure. A group is every run whose config.yaml is the same once
the seed and the bookkeeping that cannot change the result (run folder, checkpoints, logging, device) are
left out. Intervals of a group mean are t intervals over its seeds; a group with one seed borrows the noise
pooled over every group with two or more (:mod:`lowrank_lm.stats.seeds`). A difference to the baseline
is *paired* when both groups ran the same seeds (the seed fixes the initialisation and the data order, so
the pairs share them and the test is sharper), else a Welch test; a group of one run against one run uses
the pooled noise.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowrank_lm.stats.seeds import SeedNoise, group_cells, pooled_noise
from lowrank_lm.tables import markdown_table
from lowrank_lm.train.curves import Run
from lowrank_lm.train.rundir import CONFIG

# train.* settings that cannot change what a run measures: they do not split a group.
BOOKKEEPING = ("seed", "out_dir", "checkpoint_interval", "checkpoint_minutes", "keep_checkpoints", "resume",
               "wandb", "log_interval", "eval_interval", "device", "compile", "distributed", "max_bad_steps",
               "activation_checkpointing", "peak_tflops")
SLOWED = "warning: other processes keep"
"""The busy-core warning the trainer prints (and a sweep's RUN/train.log keeps) when others slowed the run."""
LEVEL = 0.95


def _config(run: Run) -> dict[str, Any]:
    import yaml

    path = run.path / CONFIG
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        data = None
    return data if isinstance(data, dict) else {}


def configuration(run: Run) -> tuple[str, str, int | None]:
    """(configuration key without the seed, shape key: the model without its FFN/attention kind plus the
    token budget, seed) of a run; runs without a readable config.yaml fall back to their summary."""
    cfg = _config(run)
    train = dict(cfg.get("train") or {})
    seed = train.get("seed")
    for k in BOOKKEEPING:
        train.pop(k, None)
    if not cfg:
        s = run.summary
        key = json.dumps({"structure": s.structure, "params": s.params, "tokens": s.tokens}, sort_keys=True)
        return key, json.dumps({"tokens": s.tokens}), None
    s = run.summary  # the measured shape too: two runs of one config file always agree on it
    key = json.dumps({**cfg, "train": train, "_run": [s.structure, s.params, s.tokens]}, sort_keys=True, default=str)
    model = {k: v for k, v in (cfg.get("model") or {}).items() if k not in ("ffn", "attn")}
    shape = json.dumps({"model": model, "tokens": run.summary.tokens, "data": cfg.get("data")}, sort_keys=True,
                       default=str)
    return key, shape, int(seed) if isinstance(seed, int) else None


def slowed(run: Run) -> bool:
    """True when the run's log holds the busy-core warning (other processes slowed it; tokens/s is low)."""
    from lowrank_lm.launch.execute import LOG_NAME

    log = run.path / LOG_NAME
    try:
        return log.is_file() and SLOWED in log.read_text(errors="replace")
    except OSError:
        return False


def human_count(n: float) -> str:
    """A count for a table: 1.84M, 254k, 1.27B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


@dataclass
class Group:
    """The runs of one configuration and their statistics over seeds."""

    label: str
    runs: list[Run]
    seeds: list[int | None]
    shape: str
    mean: float = math.nan
    sd: float | None = None
    ci: tuple[float, float] | None = None
    diff: dict[str, Any] | None = None
    slowed: list[str] = field(default_factory=list)

    @property
    def losses(self) -> np.ndarray:
        """The final validation loss of each run."""
        return np.array([r.summary.final_val_loss for r in self.runs])

    @property
    def structure(self) -> str:
        """The FFN structure the group's runs share."""
        return self.runs[0].summary.structure

    def to_json(self) -> dict[str, Any]:
        """The group as a row of compare.json: its runs, losses and statistics."""
        s = self.runs[0].summary
        return {"group": self.label, "structure": self.structure, "params": s.params, "tokens": s.tokens,
                "train_flops": s.train_flops, "runs": [r.label for r in self.runs], "seeds": self.seeds,
                "val_losses": self.losses.tolist(), "mean": self.mean, "sd": self.sd,
                "ci": list(self.ci) if self.ci else None,
                "tokens_per_s": float(np.mean([r.summary.tokens_per_s for r in self.runs])),
                "slowed_runs": self.slowed, "vs_baseline": self.diff}


def _label(runs: list[Run]) -> str:
    """The runs' common name: the folder name without its -seed<S> suffix (and without a folder prefix)."""
    names = {re.sub(r"-seed\d+$", "", r.path.name) for r in runs}
    return names.pop() if len(names) == 1 else f"{runs[0].path.name} (+{len(runs) - 1})"


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by configuration, in first-seen order."""
    by_key: dict[str, list[tuple[Run, str, int | None]]] = {}
    for run in runs:
        key, shape, seed = configuration(run)
        by_key.setdefault(key, []).append((run, shape, seed))
    groups = [Group(_label([m[0] for m in members]), [m[0] for m in members], [m[2] for m in members],
                    members[0][1]) for members in by_key.values()]
    labels = [g.label for g in groups]
    for g in groups:  # two configurations with one name (two sweeps): keep the folder paths apart
        if labels.count(g.label) > 1:
            g.label = str(g.runs[0].path)
    return groups


def seed_noise(groups: list[Group]) -> SeedNoise | None:
    """The seed-to-seed noise pooled over every group with two or more runs (relative, in log loss)."""
    cells = group_cells([i for i, g in enumerate(groups) for _ in g.runs],
                        np.concatenate([g.losses for g in groups]))
    return pooled_noise([cells])


def _t(dof: float) -> float:
    from scipy.stats import t

    return float(t.ppf(1 - (1 - LEVEL) / 2, dof))


def summarise(groups: list[Group], noise: SeedNoise | None) -> None:
    """Each group's mean, sd and interval (a lone run borrows the pooled noise, in loss units)."""
    for g in groups:
        x = g.losses
        g.mean = float(x.mean())
        g.slowed = [r.label for r in g.runs if slowed(r)]
        if len(x) >= 2:
            g.sd = float(x.std(ddof=1))
            half = _t(len(x) - 1) * g.sd / math.sqrt(len(x))
        elif noise is not None:
            half = _t(noise.dof) * noise.sd * g.mean
        else:
            continue
        g.ci = (g.mean - half, g.mean + half)


def _no_spread(x: np.ndarray) -> bool:
    """Whether these values are equal up to rounding (a t test has no variance to work with)."""
    return float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


def difference(g: Group, base: Group, noise: SeedNoise | None) -> dict[str, Any]:
    """g - base with its interval and test: paired on common seeds, else Welch, else the pooled noise."""
    from scipy import stats

    a, b = g.losses, base.losses
    out: dict[str, Any] = {"baseline": base.label, "diff": float(a.mean() - b.mean()), "ci": None, "p": None,
                           "test": None}
    seeds_a, seeds_b = dict(zip(g.seeds, a)), dict(zip(base.seeds, b))
    common = [s for s in seeds_a if s is not None and s in seeds_b]
    if len(common) >= 2 and len(common) == len(a) == len(b):
        d = np.array([seeds_a[s] - seeds_b[s] for s in common])
        half = _t(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
        if _no_spread(d):  # every seed moved by the same amount: t is undefined (scipy warns and returns nan)
            out.update(test="paired, no spread between seeds (no t test)", ci=[out["diff"]] * 2)
            return out
        out.update(test="paired t", p=float(stats.ttest_rel(a=[seeds_a[s] for s in common],
                                                             b=[seeds_b[s] for s in common]).pvalue))
    elif len(a) >= 2 and len(b) >= 2 and _no_spread(a) and _no_spread(b):
        out.update(test="no spread between seeds (no t test)", ci=[out["diff"]] * 2)
        return out
    elif len(a) >= 2 and len(b) >= 2:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
        half = _t(dof) * math.sqrt(va + vb)
        out.update(test="Welch t", p=float(stats.ttest_ind(a, b, equal_var=False).pvalue))
    elif noise is not None:
        se = noise.sd * base.mean * math.sqrt(1 / len(a) + 1 / len(b))
        half = _t(noise.dof) * se
        out.update(test="t on the pooled seed noise",
                   p=float(2 * stats.t.sf(abs(out["diff"]) / se, noise.dof)) if se > 0 else None)
    else:
        return out
    out["ci"] = [out["diff"] - half, out["diff"] + half]
    return out


def pick_baseline(groups: list[Group], name: str | None) -> list[Group]:
    """The groups named ``name`` (by label or structure; default: the dense structure), one per shape."""
    from lowrank_lm.errors import UserError
    from lowrank_lm.layers.registry import DENSE

    want = name or DENSE
    found = [g for g in groups if g.label == want] or [g for g in groups if g.structure == want]
    if not found and name is not None:
        raise UserError(f"--baseline {name}: no group or structure of that name (groups: "
                        f"{', '.join(g.label for g in groups)})")
    return found


def compare_groups(runs: list[Run], baseline: str | None = None) -> tuple[list[Group], SeedNoise | None]:
    """Group, summarise and difference the runs; groups sorted by mean loss (best first)."""
    groups = group_runs(runs)
    noise = seed_noise(groups)
    summarise(groups, noise)
    bases = pick_baseline(groups, baseline)
    for g in groups:
        match = [b for b in bases if b.shape == g.shape and b is not g]
        if len(match) == 1 and g not in bases:
            g.diff = difference(g, match[0], noise)
    return sorted(groups, key=lambda g: g.mean), noise


def _signed(v: float) -> str:
    return f"{v:+.4f}"


def group_table(groups: list[Group], baseline: str | None = None) -> str:
    """The markdown table of the groups, best first; tokens/s marked * when a run was slowed by others."""
    base = next((g.diff["baseline"] for g in groups if g.diff), baseline or "baseline")
    head = ["group", "FFN", "params", "tokens", "seeds", f"val loss mean [{LEVEL:.0%} CI]", "seed sd",
            f"vs {base} [{LEVEL:.0%} CI]", "test", "tokens/s"]
    rows = []
    for g in groups:
        s = g.runs[0].summary
        ci = f" [{g.ci[0]:.4f}, {g.ci[1]:.4f}]" if g.ci else ""
        d = g.diff
        if d is None:
            vs, test = "", ""
        else:
            vs = _signed(d["diff"]) + (f" [{_signed(d['ci'][0])}, {_signed(d['ci'][1])}]" if d["ci"] else "")
            test = f"{d['test']}, p = {d['p']:.2g}" if d["p"] is not None else "no interval (one seed each)"
        tps = float(np.mean([r.summary.tokens_per_s for r in g.runs]))
        rows.append([g.label, g.structure, human_count(s.params), f"{s.tokens:,}", str(len(g.runs)),
                     f"{g.mean:.4f}{ci}", "" if g.sd is None else f"{g.sd:.4f}", vs, test,
                     f"{tps:,.0f}{'*' if g.slowed else ''}"])
    return markdown_table(head, rows) + "\n"


def notes(groups: list[Group], noise: SeedNoise | None) -> list[str]:
    """The seed noise and what the table's marks mean."""
    out = [noise.describe() if noise is not None else
           "seed noise: not measured (no configuration ran with two or more seeds); intervals need seeds"]
    slowed_runs = [r for g in groups for r in g.slowed]
    if slowed_runs:
        out.append(f"* tokens/s of {', '.join(slowed_runs)}: other processes kept cores busy during the run (its "
                   "log has the busy-core warning), so the throughput is low")
    return out
