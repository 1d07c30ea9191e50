"""`plan` from a shared-exponent fit (``fit --law shared --json``): each series' compute multiplier with its
interval, the loss it reaches at the budget, and (with a bench) the wall-clock time it takes to reach the
baseline's loss.

A compute law has no model size in it, so this plan ranks structures at a budget but cannot choose N; the
joint law does that. With k the multiplier, the series reaches at C FLOPs the loss the baseline reaches at
k C. With a bench, its FLOP rate r_s (tokens/s x FLOPs per token of the bench model) gives the time to the
baseline's loss at C: C / (k r_s), against C / r_base for the baseline; the ratio k r_s / r_base is the
speed-up at equal loss, with the multiplier's interval.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lowrank_lm.errors import UserError
from lowrank_lm.stats.planner import SURE, human_time
from lowrank_lm.stats.shared import SharedFit


def is_shared_fit(path: str | Path) -> bool:
    """True when ``path`` holds a shared-exponent fit (a JSON object with "law": "shared")."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("law") == "shared"


def load_shared(path: str | Path) -> SharedFit:
    """The shared-exponent fit that `fit --law shared --json` wrote to ``path``; a missing field is one line."""
    try:
        return SharedFit.from_json(json.loads(Path(path).read_text()))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: a field of the shared fit is missing ({e}); regenerate it with "
                        "`lowrank-lm fit RESULTS.csv --law shared --json`") from None


def _bench_rate(bench: list[dict[str, Any]], name: str) -> float | None:
    """FLOPs per second of the fastest bench row whose kind the series name starts with (and of its fraction)."""
    rows = [r for r in bench if r.get("flops_per_token") and name.startswith(str(r["kind"]))]
    pct = name.rsplit("-", 1)[-1]
    if pct.isdigit():
        rows = [r for r in rows if r.get("fraction") and math.floor(float(r["fraction"]) * 100 + 0.5) == int(pct)]
    return max((r["tokens_per_s"] * r["flops_per_token"] for r in rows), default=None)


def plan_shared(fit: SharedFit, budget: float, bench: list[dict[str, Any]] | None = None,
                level: float = 0.95) -> dict[str, Any]:
    """Every series at ``budget`` FLOPs: multiplier, predicted loss [CI], time to the baseline's loss."""
    if not budget > 0 or not math.isfinite(budget):
        raise UserError(f"--budget-flops must be a positive number of FLOPs, got {budget}")
    q = (1 - level) / 2
    rows = []
    base_rate = _bench_rate(bench, fit.baseline) if bench else None
    for name in fit.names:
        losses = fit.sample_losses(name, np.array([budget]))[:, 0]
        row: dict[str, Any] = {"series": name, "compute_multiplier": fit.multiplier(name),
                               "ci": list(ci) if (ci := fit.k_ci.get(name)) else None,
                               "loss": float(fit.predict(name, budget)),
                               "loss_ci": [float(v) for v in np.quantile(losses, [q, 1 - q])] if len(losses) >= 10
                               else None, "replicates": losses}
        rate = _bench_rate(bench, name) if bench else None
        if rate and base_rate:
            row["time_to_baseline_loss_s"] = budget / (fit.multiplier(name) * rate)
            row["speedup_at_equal_loss"] = fit.multiplier(name) * rate / base_rate
            ci = fit.k_ci.get(name)
            row["speedup_ci"] = [ci[0] * rate / base_rate, ci[1] * rate / base_rate] if ci else None
        rows.append(row)
    rows.sort(key=lambda r: r["loss"])
    p_best = None
    if len(rows) > 1 and len(rows[0]["replicates"]) and len(rows[1]["replicates"]):
        p_best = float(np.mean(rows[0]["replicates"] < rows[1]["replicates"]))
    for r in rows:
        del r["replicates"]
    sure = p_best is not None and p_best >= SURE
    verdict = (f"{rows[0]['series']}, lower loss than {rows[1]['series']} in {p_best:.0%} of replicates" if sure
               else f"{rows[0]['series']}, not distinguishable from {rows[1]['series']}"
               + (f" (lower in {p_best:.0%} of replicates)" if p_best is not None else ""))
    return {"law": "shared", "budget_flops": budget, "baseline": fit.baseline, "verdict": verdict,
            "p_best": p_best, "series": rows,
            "notes": ["a compute law has no model size in it: it ranks the structures at the budget but cannot "
                      "choose N; fit the joint law (--law joint) for that"]}


def format_shared_plan(p: dict[str, Any]) -> str:
    """The plan as text: the verdict, then one line per series with its multiplier and predicted loss."""
    lines = [f"plan for {p['budget_flops']:.3g} training FLOPs (shared-exponent fit, baseline {p['baseline']}): "
             f"{p['verdict']}"]
    for r in p["series"]:
        k, ci = r["compute_multiplier"], r["ci"]
        k_text = "k = 1 (baseline)" if r["series"] == p["baseline"] else \
            f"worth {k:.3g}x" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "") + f" the compute of {p['baseline']}"
        lci = f" [{r['loss_ci'][0]:.4g}, {r['loss_ci'][1]:.4g}]" if r["loss_ci"] else ""
        line = f"  {r['series']}: {k_text}; predicted loss {r['loss']:.4g}{lci}"
        if "time_to_baseline_loss_s" in r:
            sci = r["speedup_ci"]
            line += (f"; reaches {p['baseline']}'s loss at this budget in {human_time(r['time_to_baseline_loss_s'])} "
                     f"at the bench's rate ({r['speedup_at_equal_loss']:.3g}x"
                     + (f" [{sci[0]:.3g}, {sci[1]:.3g}]" if sci else "") + f" the speed of {p['baseline']})")
        lines.append(line)
    lines += [f"note: {n}" for n in p["notes"]]
    return "\n".join(lines)
