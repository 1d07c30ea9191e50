"""The planner: which structure, fraction and model size to train for a compute budget, from joint-law fits.

For every fitted series (one structure at one fraction) the compute-optimal size N* minimises the fitted
L(N, D) along the budget's line D = C / (FLOPs per token of N); the predicted loss of training that model is
the fitted surface at (N*, D*), with a percentile interval over the fit's bootstrap replicates (every
replicate evaluated at the same recommended N* and D*: the loss you would get from that run). The series
with the lowest predicted loss is recommended; the share of paired replicates in which it beats the
runner-up says how sure that is, and below 95% the two are called not distinguishable.

With ``bench`` results (the ``train`` bench's JSON: rows with kind, fraction, tokens_per_s, median_ms), each
structure's measured throughput relative to dense and its step time can constrain the choice
(``min_speedup``, ``max_step_ms``); the bench measured one model size, so these are properties of the
structure at that size, not of the recommended model, and the plan says so.

A recommendation is flagged as an extrapolation when the budget, N* or D* lies outside what the series was
fitted on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowrank_lm.errors import UserError
from lowrank_lm.stats.isoflop import joint_optimum
from lowrank_lm.stats.joint import JointFit, surface
from lowrank_lm.tables import text_table

SURE = 0.95
"""Share of paired replicates in which the best series must win to be called better than the runner-up."""


@dataclass
class Candidate:
    """One series at the budget: its compute-optimal size, the predicted loss and what limits the claim."""

    series: str
    structure: str | None
    fraction: float | None
    N: float
    D: float
    loss: float
    loss_ci: tuple[float, float] | None
    extrapolation: list[str] = field(default_factory=list)
    speedup: float | None = None
    step_ms: float | None = None
    hours: float | None = None
    excluded: str | None = None
    replicate_loss: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"series": self.series, "structure": self.structure, "fraction": self.fraction, "N": self.N,
                "D": self.D, "loss": self.loss, "loss_ci": list(self.loss_ci) if self.loss_ci else None,
                "extrapolation": list(self.extrapolation), "speedup": self.speedup, "step_ms": self.step_ms,
                "hours_at_bench_rate": self.hours, "excluded": self.excluded}


@dataclass
class Plan:
    """The candidates (best first among the allowed ones) and the verdict on the best."""

    budget: float
    candidates: list[Candidate]
    best: Candidate | None
    runner_up: Candidate | None
    p_best: float | None
    """Share of paired replicates in which the best beats the runner-up."""
    verdict: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"budget_flops": self.budget, "recommendation": self.best.to_json() if self.best else None,
                "runner_up": self.runner_up.series if self.runner_up else None, "p_best": self.p_best,
                "verdict": self.verdict, "candidates": [c.to_json() for c in self.candidates], "notes": self.notes}


def load_fits(path: str | Path) -> dict[str, JointFit]:
    """Joint-law fits from ``fit --law joint --json`` (or a report's fit.json); one-line errors otherwise."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"fit file not found: {p}; make one with `lowrank-lm fit RESULTS.csv --law joint --json "
                        f"> {p.name}`")
    try:
        data = json.loads(p.read_text())
    except ValueError:
        raise UserError(f"{p} is not JSON; make it with `lowrank-lm fit RESULTS.csv --law joint --json`") from None
    series = data.get("series") if isinstance(data, dict) else None
    if not isinstance(series, dict) or not series:
        raise UserError(f"{p} holds no series; make it with `lowrank-lm fit RESULTS.csv --law joint --json`")
    laws = {str(v.get("law", "compute")) for v in series.values() if isinstance(v, dict)}
    if laws != {"joint"}:
        raise UserError(f"{p} holds compute-law fits (L(C)), which cannot choose a model size; fit the joint law: "
                        "`lowrank-lm fit RESULTS.csv --law joint --json`")
    try:
        fits = {name: JointFit.from_json(name, d) for name, d in series.items()}
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{p}: a series lacks a field of the joint fit ({e}); regenerate it with this version") \
            from None
    return fits


def _pct(fraction: float | None) -> int | None:
    return None if fraction is None else math.floor(float(fraction) * 100 + 0.5)


def load_bench(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``bench train`` result file that carry kind, fraction and tokens_per_s."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"bench file not found: {p}; give the train.json that `lowrank-lm bench train --out DIR` "
                        "writes")
    try:
        data = json.loads(p.read_text())
    except ValueError:
        raise UserError(f"{p} is not JSON; give the train.json that `lowrank-lm bench train` writes") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    keep = [r for r in rows or [] if isinstance(r, dict) and r.get("kind") and r.get("tokens_per_s")
            and r.get("model", "ours") == "ours"]
    if not keep:
        raise UserError(f"{p} has no rows with kind, fraction and tokens_per_s; give the train.json of "
                        "`lowrank-lm bench train`")
    return keep


def _bench_row(rows: list[dict[str, Any]], structure: str | None, fraction: float | None) -> dict[str, Any] | None:
    """The fastest bench row of the same FFN kind and fraction (the dense baseline: fraction 1 or none)."""
    from lowrank_lm.layers.registry import DENSE  # here, not at import time: this module stays free of torch

    want = _pct(fraction)
    match = [r for r in rows if structure is not None and (r["kind"] == structure or structure.startswith(r["kind"]))
             and (_pct(r.get("fraction")) == want or (r["kind"] == DENSE and want is None))]
    return max(match, key=lambda r: r["tokens_per_s"]) if match else None


def _candidate(fit: JointFit, C: float, level: float) -> Candidate:
    lnN, lnD = joint_optimum(fit, np.array([C]))
    N, D = float(math.exp(lnN[0, 0])), float(math.exp(lnD[0, 0]))
    cand = Candidate(fit.name, fit.structure, fit.fraction, N, D, float(fit.predict(N, D)[0]), None)
    samples = fit.ok_samples()
    if len(samples) >= 10:
        cand.replicate_loss = surface(samples, np.array([N]), np.array([D]))[:, 0]
        q = (1 - level) / 2
        lo, hi = np.quantile(cand.replicate_loss, [q, 1 - q])
        cand.loss_ci = (float(lo), float(hi))
    for what, value, (lo_r, hi_r) in (("budget", C, fit.C_range or (math.nan, math.nan)),
                                      ("N*", N, fit.N_range), ("D*", D, fit.D_range)):
        if not lo_r <= value <= hi_r:
            cand.extrapolation.append(f"{what} {value:.3g} outside the fitted {lo_r:.3g}-{hi_r:.3g}")
    return cand


def plan(fits: dict[str, JointFit], budget: float, bench: list[dict[str, Any]] | None = None,
         min_speedup: float | None = None, max_step_ms: float | None = None, level: float = 0.95) -> Plan:
    """Rank every fitted series at ``budget`` FLOPs and recommend the best allowed one (see the module doc)."""
    if not budget > 0 or not math.isfinite(budget):
        raise UserError(f"--budget-flops must be a positive number of FLOPs, got {budget}")
    if (min_speedup is not None or max_step_ms is not None) and bench is None:
        raise UserError("--min-speedup and --max-step-ms constrain by measured speed; give --bench BENCH.json too")
    notes: list[str] = []
    cands = []
    for fit in fits.values():
        if fit.flops_per_token is None:
            notes.append(f"{fit.name}: no FLOPs per token in the fit (the results had no flops column or one size); "
                         "skipped")
            continue
        cands.append(_candidate(fit, budget, level))
    if not cands:
        raise UserError("no series in the fit file can be planned (each needs FLOPs and several sizes)")
    if bench is not None:
        from lowrank_lm.layers.registry import DENSE

        dense = _bench_row(bench, DENSE, None)
        for c in cands:
            row = _bench_row(bench, c.structure or c.series, c.fraction)  # a table without structure: the name
            if row is None:
                if min_speedup is not None or max_step_ms is not None:
                    c.excluded = "no bench row of this structure and fraction"
                continue
            c.speedup = row["tokens_per_s"] / dense["tokens_per_s"] if dense else None
            c.step_ms = row.get("median_ms")
            if row.get("flops_per_token"):
                c.hours = budget / (row["tokens_per_s"] * row["flops_per_token"]) / 3600
            if min_speedup is not None and (c.speedup is None or c.speedup < min_speedup):
                c.excluded = f"speedup {c.speedup:.3g} below {min_speedup:g}" if c.speedup else "no dense bench row"
            elif max_step_ms is not None and (c.step_ms is None or c.step_ms > max_step_ms):
                c.excluded = f"step {c.step_ms:.3g} ms above {max_step_ms:g} ms" if c.step_ms else "no step time"
        notes.append("speed is the bench's, measured at its own model size and batch on its device; the times "
                     "assume the recommended model runs at the bench model's FLOP rate")
    allowed = sorted((c for c in cands if c.excluded is None), key=lambda c: c.loss)
    ranked = allowed + [c for c in cands if c.excluded is not None]
    best = allowed[0] if allowed else None
    runner = allowed[1] if len(allowed) > 1 else None
    p_best = None
    if best is None:
        verdict = "no structure meets the constraints"
    elif runner is None:
        verdict = f"{best.series} (the only candidate)"
    else:
        if best.replicate_loss is not None and runner.replicate_loss is not None:
            n = min(len(best.replicate_loss), len(runner.replicate_loss))
            p_best = float(np.mean(best.replicate_loss[:n] < runner.replicate_loss[:n]))
        if p_best is not None and p_best >= SURE:
            verdict = f"{best.series}, better than {runner.series} in {p_best:.0%} of replicates"
        else:
            share = f" (better in {p_best:.0%} of replicates)" if p_best is not None else ""
            verdict = f"{best.series}, not distinguishable from {runner.series}{share}"
    return Plan(budget, ranked, best, runner, p_best, verdict, notes)


def human_time(seconds: float) -> str:
    """A duration in the unit a person reads: 40 s, 12 min, 3.2 h, 4.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.2g} h" if seconds < 36000 else f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.2g} days" if seconds < 864000 else f"{seconds / 86400:.0f} days"


def format_plan(p: Plan) -> str:
    """The plan as text: the recommendation, then every candidate."""
    lines = [f"plan for {p.budget:.3g} training FLOPs: {p.verdict}"]
    if p.best is not None:
        b = p.best
        ci = f" [{b.loss_ci[0]:.4g}, {b.loss_ci[1]:.4g}]" if b.loss_ci else ""
        frac = f" at {b.fraction:.0%} of the FFN weights" if b.fraction else ""
        lines.append(f"  train {b.structure or b.series}{frac}: N = {b.N:.3g} parameters on D = {b.D:.3g} tokens "
                     f"({b.D / b.N:.3g} tokens per parameter); predicted loss {b.loss:.4g}{ci}")
        if b.extrapolation:
            lines.append("  EXTRAPOLATION: " + "; ".join(b.extrapolation))
    header = ["series", "N*", "D*", "loss [CI]", "speedup", "step ms", "time at bench rate", "note"]
    rows = []
    for c in p.candidates:
        ci = f" [{c.loss_ci[0]:.4g}, {c.loss_ci[1]:.4g}]" if c.loss_ci else ""
        note = (c.excluded and f"excluded: {c.excluded}") or ("extrapolates" if c.extrapolation else "")
        rows.append([c.series, f"{c.N:.3g}", f"{c.D:.3g}", f"{c.loss:.4g}{ci}",
                     f"{c.speedup:.3g}" if c.speedup else "", f"{c.step_ms:.3g}" if c.step_ms else "",
                     human_time(c.hours * 3600) if c.hours else "", note])
    lines += ["", text_table(header, rows, indent="  ")]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)
