"""IsoFLOP profiles (Hoffmann et al. 2022, approach 2) and compute-optimal sizes N*(C), D*(C) per structure.

An IsoFLOP design trains several model sizes at each of several compute budgets (``budgets: {flops: [...]}``
in a sweep file). For each budget:

* a parabola in ln N is fitted to ln L of the sizes (cell means over seeds); its vertex is the loss-minimising
  size N*, and the tokens D* are read off the budget's own runs (ln D is linear in ln N at fixed compute);
* the interval of N* comes from a parametric bootstrap of the cell means: Gaussian noise whose scale is the
  larger of the parabolas' residual standard error (pooled over the series' budgets) and the run-to-run
  noise of a mean of that many seeds, each drawn from its sampling distribution. A replicate whose parabola
  opens downwards has no minimum; the share of replicates with one is reported, and a vertex outside the sizes
  tried is flagged (the profile does not bracket the optimum; add sizes).

Across budgets, N*(C) = G C^a and D*(C) = H C^b are fitted by least squares in logs, per bootstrap replicate,
which gives the exponents their intervals. The joint law (approach 3) gives the same quantities from the
fitted surface: N*(C) minimises L(N, D(C, N)) with D(C, N) the tokens that spend C on N parameters (from
the runs' own FLOPs per token). Two structures are compared on the exponents and on N* at a common budget;
a difference is stated only when the intervals allow it, else "not distinguishable".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from lowrank_lm.stats.bootstrap import noise_scales, perturb, quantile_interval
from lowrank_lm.stats.joint import JointFit, JointSeries, surface
from lowrank_lm.stats.seeds import SeedNoise, group_cells

MIN_SIZES = 3
"""A parabola needs three sizes per budget."""
GRID_POINTS = 801
"""Grid of ln N on which the joint law's optimum is searched (over 12 e-folds around the data: ~1.5% steps)."""


@dataclass
class BudgetProfile:
    """One IsoFLOP profile: the sizes tried at one budget, the parabola and its vertex."""

    label: str
    C: float
    N: np.ndarray
    loss: np.ndarray
    """Cell means (geometric over seeds)."""
    count: np.ndarray
    D_line: tuple[float, float]
    """(slope, intercept) of ln D on ln N among this budget's runs."""
    coef: np.ndarray
    """(c2, c1, c0) of ln L = c2 x^2 + c1 x + c0, x = ln N - x0."""
    x0: float
    N_opt: float | None = None
    N_opt_ci: tuple[float, float] | None = None
    D_opt: float | None = None
    D_opt_ci: tuple[float, float] | None = None
    L_opt: float | None = None
    share_with_minimum: float | None = None
    inside: bool = False
    """Whether the vertex lies within the sizes tried."""
    samples: np.ndarray | None = field(default=None, repr=False)
    """ln N* per bootstrap replicate (NaN: no minimum)."""

    def D_at(self, lnN: np.ndarray | float) -> np.ndarray:
        with np.errstate(over="ignore"):  # a bootstrap vertex far outside the sizes: D* is inf, said as such
            return np.exp(self.D_line[1] + self.D_line[0] * np.asarray(lnN))

    def parabola(self, N: np.ndarray) -> np.ndarray:
        """The fitted profile's loss at N."""
        return np.exp(np.polyval(self.coef, np.log(N) - self.x0))

    def to_json(self) -> dict[str, Any]:
        def pair(v: tuple[float, float] | None) -> list[float] | None:
            return None if v is None else [float(v[0]), float(v[1])]

        return {"budget": self.label, "C": self.C, "sizes": [float(n) for n in self.N],
                "loss": [float(v) for v in self.loss], "N_opt": self.N_opt, "N_opt_ci": pair(self.N_opt_ci),
                "D_opt": self.D_opt, "D_opt_ci": pair(self.D_opt_ci), "L_opt": self.L_opt,
                "share_with_minimum": self.share_with_minimum, "inside_sizes": self.inside}


@dataclass
class OptimumLaw:
    """X*(C) = G C^a over budgets, from one approach; ``samples`` holds (a, ln G) per replicate."""

    what: str
    """N or D."""
    approach: str
    """isoflop (approach 2) or joint (approach 3)."""
    exponent: float
    coefficient: float
    exponent_ci: tuple[float, float] | None = None
    samples: np.ndarray | None = field(default=None, repr=False)

    def at(self, C: np.ndarray | float) -> np.ndarray:
        return self.coefficient * np.asarray(C, float) ** self.exponent

    def to_json(self) -> dict[str, Any]:
        return {"exponent": self.exponent, "exponent_ci": None if self.exponent_ci is None else
                list(self.exponent_ci), "coefficient": self.coefficient}


@dataclass
class IsoflopSeries:
    """The IsoFLOP analysis of one series: its profiles and its optimum laws from both approaches."""

    name: str
    profiles: list[BudgetProfile]
    laws: dict[str, OptimumLaw] = field(default_factory=dict)
    """Keyed N_isoflop, D_isoflop, N_joint, D_joint."""
    joint_opt: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """The joint law's optimum per budget: ln N* and ln D* per replicate (rows) and budget (columns)."""
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"profiles": [p.to_json() for p in self.profiles],
                "laws": {k: v.to_json() for k, v in self.laws.items()}, "warnings": list(self.warnings)}


def _budget_groups(ser: JointSeries) -> dict[str, np.ndarray]:
    """Row indices per FLOP budget: the ``budget`` column when filled (token budgets are not IsoFLOP budgets: the
    compute of their runs was never fixed), else FLOPs equal within 2%."""
    from lowrank_lm.stats.table import is_flop_budget

    groups: dict[str, list[int]] = {}
    if all(ser.budgets):
        for i, b in enumerate(ser.budgets):
            if is_flop_budget(b):
                groups.setdefault(b, []).append(i)
    elif ser.C is not None:
        order = np.argsort(ser.C)
        anchor = None
        for i in order:
            if anchor is None or ser.C[i] > anchor * 1.02:
                anchor = float(ser.C[i])
            groups.setdefault(f"C{anchor:.3g}", []).append(int(i))
    return {k: np.array(v) for k, v in groups.items()}


def is_isoflop(ser: JointSeries) -> bool:
    """True when the series holds three or more sizes at some budget (two such budgets give N*(C))."""
    if ser.C is None:
        return False
    return any(len(np.unique(ser.N[idx])) >= MIN_SIZES for idx in _budget_groups(ser).values())


def _profiles(ser: JointSeries) -> list[BudgetProfile]:
    out = []
    assert ser.C is not None
    for label, idx in _budget_groups(ser).items():
        cells = group_cells(ser.N[idx].tolist(), ser.loss[idx])
        if len(cells.keys) < MIN_SIZES:
            continue
        N = np.array(cells.keys, float)
        order = np.argsort(N)
        lnN = np.log(N[order])
        x0 = float(lnN.mean())
        coef = np.polyfit(lnN - x0, cells.mean_log[order], 2)
        d_slope, d_icpt = np.polyfit(np.log(ser.N[idx]), np.log(ser.D[idx]), 1)
        out.append(BudgetProfile(label=label, C=float(np.exp(np.log(ser.C[idx]).mean())), N=N[order],
                                 loss=np.exp(cells.mean_log[order]), count=cells.count[order],
                                 D_line=(float(d_slope), float(d_icpt)), coef=coef, x0=x0))
    return sorted(out, key=lambda p: p.C)


def _vertex(coef: np.ndarray) -> np.ndarray:
    """x of the minimum of each parabola row (c2, c1, c0); NaN where it opens downwards."""
    c2, c1 = coef[..., 0], coef[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(c2 > 0, -c1 / (2 * c2), np.nan)


def _power_law(lnC: np.ndarray, lnX: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OLS of each row of ``lnX`` (replicates x budgets) on ``lnC``: (slopes, intercepts); NaN rows stay NaN."""
    xc = lnC - lnC.mean()
    slope = ((lnX - lnX.mean(axis=-1, keepdims=True)) @ xc) / (xc @ xc)
    return slope, lnX.mean(axis=-1) - slope * lnC.mean()


def _law(what: str, approach: str, lnC: np.ndarray, point: np.ndarray, reps: np.ndarray | None,
         level: float) -> OptimumLaw:
    a, lnG = _power_law(lnC, point[None, :])
    law = OptimumLaw(what, approach, float(a[0]), float(np.exp(lnG[0])))
    if reps is not None and len(reps):
        ok = np.isfinite(reps).all(axis=1)
        s_a, s_g = _power_law(lnC, reps[ok])
        law.samples = np.column_stack([s_a, s_g])
        law.exponent_ci = quantile_interval(s_a, level)
    return law


def profile_series(ser: JointSeries, noise: SeedNoise | None, n_bootstrap: int, level: float,
                   rng: np.random.Generator) -> IsoflopSeries:
    """Approach 2 for one series: parabola per budget, vertices with intervals, N*(C) and D*(C)."""
    profiles = _profiles(ser)
    result = IsoflopSeries(ser.name, profiles)
    rss = sum(float(np.sum((np.polyval(p.coef, np.log(p.N) - p.x0) - np.log(p.loss)) ** 2)) for p in profiles)
    dof = sum(len(p.N) - 3 for p in profiles)
    s = math.sqrt(rss / dof) if dof > 0 else 0.0
    B = n_bootstrap if (dof > 0 or noise is not None) else 0
    if B == 0:
        result.warnings.append("three sizes per budget and no seeds: the parabolas leave no residual to estimate "
                               "noise from, so no intervals; add sizes or seeds")
    # the noise scale of every point of every profile, drawn once per replicate (shared by the profiles)
    count = np.concatenate([p.count for p in profiles]) if profiles else np.zeros(0)
    seed_sd, seed_dof = (noise.sd, noise.dof) if noise is not None else (0.0, 0)
    sig = noise_scales(rng, B, s, dof, np.zeros(len(count)), seed_sd, seed_dof, count)
    first = 0
    for p in profiles:
        p_sig, first = sig[:, first:first + len(p.N)], first + len(p.N)
        x = np.log(p.N) - p.x0
        vx = float(_vertex(p.coef[None, :])[0])
        if math.isfinite(vx):
            p.N_opt = float(np.exp(vx + p.x0))
            p.D_opt = float(p.D_at(vx + p.x0))
            p.L_opt = float(np.exp(np.polyval(p.coef, vx)))
            p.inside = bool(x.min() <= vx <= x.max())
        else:
            result.warnings.append(f"budget {p.label}: the profile has no minimum (the loss falls or rises "
                                   "monotonically with size); add sizes on the rising side")
        if p.N_opt is not None and not p.inside:
            result.warnings.append(f"budget {p.label}: the minimum lies outside the sizes tried "
                                   f"({p.N.min():.3g}-{p.N.max():.3g}); its value is an extrapolation")
        if B:
            # each replicate perturbs the fitted parabola; a refit is a linear solve, all replicates at once
            Y = perturb(rng, np.polyval(p.coef, x), p_sig)
            coefs = np.linalg.lstsq(np.vander(x, 3), Y.T, rcond=None)[0].T
            vx_s = _vertex(coefs)
            p.samples = vx_s + p.x0
            p.share_with_minimum = float(np.isfinite(vx_s).mean())
            lo_hi = quantile_interval(p.samples, level)
            if lo_hi is not None and p.N_opt is not None:
                p.N_opt_ci = (math.exp(lo_hi[0]), math.exp(lo_hi[1]))
                d = quantile_interval(np.log(p.D_at(p.samples[np.isfinite(p.samples)])), level)
                p.D_opt_ci = (math.exp(d[0]), math.exp(d[1])) if d else None
    usable = [p for p in profiles if p.N_opt is not None]
    if len(usable) >= 2:
        lnC = np.log([p.C for p in usable])
        samples = [p.samples for p in usable if p.samples is not None]
        reps = np.column_stack(samples) if B and len(samples) == len(usable) else None
        lnN = np.log([p.N_opt for p in usable if p.N_opt is not None])
        result.laws["N_isoflop"] = _law("N", "isoflop", lnC, lnN, reps, level)
        d_reps = None if reps is None else np.column_stack([np.log(p.D_at(reps[:, k])) for k, p in enumerate(usable)])
        lnD = np.log([p.D_opt for p in usable if p.D_opt is not None])  # set with N_opt
        result.laws["D_isoflop"] = _law("D", "isoflop", lnC, lnD, d_reps, level)
    return result


def joint_optimum(fit: JointFit, C: np.ndarray, params: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ln N* and ln D* of the joint law at each budget in ``C``, for each parameter row (default: the fit).

    N* minimises L(N, D(C, N)) on a grid of ln N around the data, D(C, N) from the series' FLOPs per token.
    Shapes (rows, budgets).
    """
    assert fit.flops_per_token is not None
    P = fit.params[None, :] if params is None else params
    lo, hi = math.log(fit.N_range[0]) - 6, math.log(fit.N_range[1]) + 6
    lnN = np.linspace(lo, hi, GRID_POINTS)
    out_n = np.empty((len(P), len(C)))
    out_d = np.empty((len(P), len(C)))
    for k, c in enumerate(C):
        D = fit.flops_per_token.tokens(c, np.exp(lnN))
        L = surface(P, np.exp(lnN), D)
        j = np.argmin(L, axis=1)
        out_n[:, k] = lnN[j]
        out_d[:, k] = np.log(D[j])
    return out_n, out_d


def add_joint_laws(iso: IsoflopSeries, fit: JointFit, level: float) -> None:
    """N*(C) and D*(C) from the joint law (approach 3) at the series' budgets."""
    if fit.flops_per_token is None or len(iso.profiles) < 2:
        return
    C = np.array([p.C for p in iso.profiles])
    lnN, lnD = joint_optimum(fit, C)
    samples = fit.ok_samples()
    rn, rd = joint_optimum(fit, C, samples) if len(samples) else (None, None)
    iso.joint_opt = {"lnN": rn if rn is not None else lnN, "lnD": rd if rd is not None else lnD}
    iso.laws["N_joint"] = _law("N", "joint", np.log(C), lnN[0], rn, level)
    iso.laws["D_joint"] = _law("D", "joint", np.log(C), lnD[0], rd, level)


def compare_best_measured(a: str, pa: BudgetProfile, b: str, pb: BudgetProfile, noise: SeedNoise | None,
                          level: float) -> dict[str, Any]:
    """The lowest measured loss of each series at one budget (its best size among those tried), a vs b.

    Model-free, unlike the parabolas: the difference of ln L carries the run-to-run noise of the two cell
    means (none is known without seeds). When a best size is the smallest or largest tried, the series'
    optimum may lie beyond it, and the comparison is between the sizes tried, not the optima.
    """
    i, j = int(np.argmin(pa.loss)), int(np.argmin(pb.loss))
    diff = math.log(pa.loss[i] / pb.loss[j])
    entry: dict[str, Any] = {"budget": pa.label, "a_loss": float(pa.loss[i]), "a_N": float(pa.N[i]),
                             "b_loss": float(pb.loss[j]), "b_N": float(pb.N[j]), "diff_log": diff,
                             "diff_log_ci": None, "verdict": "not distinguishable",
                             "at_edge": i in (0, len(pa.N) - 1) or j in (0, len(pb.N) - 1)}
    if noise is not None:
        half = NormalDist().inv_cdf(0.5 + level / 2) * noise.sd * math.sqrt(1 / pa.count[i] + 1 / pb.count[j])
        entry["diff_log_ci"] = [diff - half, diff + half]
        if diff + half < 0 or diff - half > 0:
            entry["verdict"] = f"{a if diff < 0 else b} lower"
    return entry


def compare_optima(a: IsoflopSeries, b: IsoflopSeries, level: float, noise: SeedNoise | None = None
                   ) -> dict[str, Any]:
    """a vs b: differences of the N* and D* exponents (both approaches), the ratio of N* and the best measured
    losses at each common budget."""
    from lowrank_lm.stats.compare import _overlap, _verdict

    out: dict[str, Any] = {"a": a.name, "b": b.name, "exponents": {}, "notes": []}
    for key in ("N_isoflop", "D_isoflop", "N_joint", "D_joint"):
        la, lb = a.laws.get(key), b.laws.get(key)
        if la is None or lb is None:
            continue
        diff = la.exponent - lb.exponent
        ci = None
        if la.samples is not None and lb.samples is not None:
            n = min(len(la.samples), len(lb.samples))
            ci = quantile_interval(la.samples[:n, 0] - lb.samples[:n, 0], level)
        verdict, _, note = _verdict(a.name, b.name, diff, ci, _overlap(la.exponent_ci, lb.exponent_ci),
                                    f"{key} exponent")
        verdict = verdict.replace("steeper than", "grows faster than")
        out["exponents"][key] = {"diff": diff, "diff_ci": list(ci) if ci else None, "verdict": verdict}
        if note:
            out["notes"].append(note.replace("steeper", "faster-growing"))
    common = [p.label for p in a.profiles if p.label in {q.label for q in b.profiles}]  # in budget order
    pa = {p.label: p for p in a.profiles}
    pb = {p.label: p for p in b.profiles}
    ratios = []
    for label in common:
        x, y = pa[label], pb[label]
        if x.N_opt is None or y.N_opt is None:
            continue
        entry: dict[str, Any] = {"budget": label, "ratio": x.N_opt / y.N_opt, "ratio_ci": None,
                                 "verdict": "not distinguishable"}
        if x.samples is not None and y.samples is not None:
            ci = quantile_interval(x.samples - y.samples, level)
            if ci is not None:
                entry["ratio_ci"] = [math.exp(ci[0]), math.exp(ci[1])]
                if ci[0] > 0 or ci[1] < 0:
                    entry["verdict"] = f"{a.name} optimum {'larger' if ci[0] > 0 else 'smaller'}"
        ratios.append(entry)
    out["N_opt_ratio"] = ratios
    out["best_measured"] = [compare_best_measured(a.name, pa[label], b.name, pb[label], noise, level)
                            for label in common]
    return out


def analyse(series: dict[str, JointSeries], fits: dict[str, JointFit], noise: SeedNoise | None, n_bootstrap: int,
            level: float, seed: int) -> tuple[dict[str, IsoflopSeries], list[dict[str, Any]]]:
    """IsoFLOP profiles and optimum laws for every series with an IsoFLOP design, and their comparisons."""
    out: dict[str, IsoflopSeries] = {}
    for k, (name, ser) in enumerate(series.items()):
        if not is_isoflop(ser):
            continue
        iso = profile_series(ser, noise, n_bootstrap, level, np.random.default_rng([seed, 1000 + k]))
        if name in fits:
            add_joint_laws(iso, fits[name], level)
        out[name] = iso
    names = list(out)
    comparisons = [compare_optima(out[a], out[b], level, noise) for i, a in enumerate(names) for b in names[i + 1:]]
    return out, comparisons
