"""The joint law with a shared shape and a parameter multiplier per series (``fit --law shared-joint``):
L(N, D) = E + A (m_s N)^(-alpha) + B D^(-beta), with E, A, alpha, B, beta shared and m = 1 for the baseline.

A series with multiplier m learns from N parameters what the baseline learns from m N: m = 1.3 reads "each
parameter is worth 1.3 of dense's". Unlike the compute multiplier of :mod:`shared` it separates what a
structure does per parameter from how many tokens it saw, so it needs runs at several token budgets (or a
series whose N and D do not move together) besides several sizes: "where the data allow it". Fitted like
:mod:`joint` (Huber loss on log residuals, delta 1e-3, normalised N and D, cell means over seeds) from a grid
of starts through :func:`multistart.multistart`; bootstrapped like the compute law (:func:`bootstrap.noise_scales`: the
residual scale drawn per replicate, floored at the seed-to-seed noise of each cell mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

from lowrank_lm.errors import UserError
from lowrank_lm.stats.bootstrap import noise_scales, quantile_interval
from lowrank_lm.stats.joint import EXPONENT_MAX, JointOptions, JointSeries
from lowrank_lm.stats.multistart import multistart
from lowrank_lm.stats.seeds import SeedNoise, pooled_noise
from lowrank_lm.stats.shared import LOG_K_MAX


@dataclass
class _Problem:
    """Cell means of every series: u = ln N - mean, v = ln D - mean, series index (0 = baseline)."""

    u: np.ndarray
    v: np.ndarray
    idx: np.ndarray
    k: int
    delta: float

    def _lm(self, p: np.ndarray) -> np.ndarray:
        return np.concatenate(([0.0], p[5:]))[self.idx]

    def model(self, p: np.ndarray) -> np.ndarray:
        e, a, al, b, be = p[:5]
        return np.logaddexp(e, np.logaddexp(a - al * (self.u + self._lm(p)), b - be * self.v))

    def jac(self, p: np.ndarray) -> np.ndarray:
        e, a, al, b, be = p[:5]
        shifted = self.u + self._lm(p)
        zn, zd = a - al * shifted, b - be * self.v
        m = np.logaddexp(e, np.logaddexp(zn, zd))
        wn = np.exp(zn - m)
        cols = np.zeros((len(self.u), self.k - 1))
        rows = np.flatnonzero(self.idx > 0)
        cols[rows, self.idx[rows] - 1] = -al * wn[rows]
        return np.column_stack([np.exp(e - m), wn, -shifted * wn, np.exp(zd - m), -self.v * np.exp(zd - m), cols])

    def bounds(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = float(y.min())
        extra = self.k - 1
        return (np.array([top - 30.0, -40.0, 0.0, -40.0, 0.0] + [-LOG_K_MAX] * extra),
                np.array([top - 1e-6, 40.0, EXPONENT_MAX, 40.0, EXPONENT_MAX] + [LOG_K_MAX] * extra))

    def starts(self, y: np.ndarray) -> list[np.ndarray]:
        lmin, lmid = float(np.exp(y.min())), float(np.exp(y.mean()))
        out = []
        for e_share, al, be in product((0.3, 0.7, 0.9), (0.15, 0.4, 1.0), (0.15, 0.4, 1.0)):
            E = e_share * lmin
            red = max(lmid - E, 1e-6 * lmid)
            out.append(np.array([math.log(E), math.log(red / 2), al, math.log(red / 2), be] + [0.0] * (self.k - 1)))
        return out

    def solve(self, y: np.ndarray, starts: list[np.ndarray]) -> Any:
        return multistart(lambda p: self.model(p) - y, self.jac, starts, self.bounds(y), loss="huber",
                          f_scale=self.delta, ftol=1e-10, xtol=1e-10, gtol=1e-10, max_nfev=300,
                          accept_unconverged=True)


@dataclass
class SharedJointFit:
    """The shared surface and each series' parameter multiplier m with its interval."""

    baseline: str
    names: list[str]
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    log_m: dict[str, float]
    residual_se: float
    dof: int
    n_cells: dict[str, int]
    m_ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    alpha_ci: tuple[float, float] | None = None
    beta_ci: tuple[float, float] | None = None
    noise: SeedNoise | None = None
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def pair(v: tuple[float, float] | None) -> list[float] | None:
            return None if v is None else [float(v[0]), float(v[1])]

        return {"law": "shared-joint", "baseline": self.baseline, "alpha": self.alpha, "alpha_ci": pair(self.alpha_ci),
                "beta": self.beta, "beta_ci": pair(self.beta_ci), "E": self.E, "A": self.A, "B": self.B,
                "series": {n: {"parameter_multiplier": math.exp(self.log_m[n]), "ci": pair(self.m_ci.get(n)),
                               "n_cells": self.n_cells[n]} for n in self.names},
                "residual_se": self.residual_se, "dof": self.dof,
                "seed_noise": self.noise.to_json() if self.noise else None, "warnings": self.warnings,
                "settings": self.settings}


def _check(series: dict[str, JointSeries], names: list[str], n_cells: int, n_params: int) -> None:
    """One-line errors when the data cannot separate a parameter multiplier from the token term."""
    D_all = np.concatenate([series[n].D for n in names])
    if len(np.unique(D_all)) < 2:
        raise UserError("the joint form needs runs at two or more token budgets (every run has the same D); use "
                        "--law shared for compute multipliers")
    base = series[names[0]]
    if len(np.unique(base.N)) < 2:
        raise UserError(f"the baseline {names[0]} needs two or more sizes for the joint form")
    if n_cells <= n_params:
        raise UserError(f"{n_cells} distinct (series, N, D) points for {n_params} parameters: the joint form needs "
                        "more sizes or budgets; use --law shared for compute multipliers")


def fit_shared_joint(series: dict[str, JointSeries], baseline: str | None = None,
                     opts: JointOptions | None = None) -> SharedJointFit:
    """Fit the shared surface with a parameter multiplier per series and bootstrap it."""
    from lowrank_lm.stats.compare import default_baseline

    opts = opts or JointOptions()
    names = list(series)
    base = baseline if baseline is not None else default_baseline(names)
    if base is None or base not in series:
        raise UserError(f"--baseline {base}: no such series (have: {', '.join(names)})" if base else
                        f"no baseline series: name one with --baseline (have: {', '.join(names)})")
    if len(names) < 2:
        raise UserError(f"the shared law compares series with {base}; give at least one other series")
    names = [base] + [n for n in names if n != base]
    cells = [series[n].cells() for n in names]
    lnN = np.concatenate([np.log([key[0] for key in c.keys]) for c in cells])  # type: ignore[index]
    lnD = np.concatenate([np.log([key[1] for key in c.keys]) for c in cells])  # type: ignore[index]
    idx = np.concatenate([np.full(len(c.keys), k) for k, c in enumerate(cells)])
    y = np.concatenate([c.mean_log for c in cells])
    count = np.concatenate([c.count for c in cells])
    n_params = 4 + len(names)
    _check(series, names, len(y), n_params)
    prob = _Problem(lnN - lnN.mean(), lnD - lnD.mean(), idx, len(names), opts.huber_delta)
    best = prob.solve(y, prob.starts(y))
    if best is None:
        raise UserError("the shared joint fit failed from every starting point; check the data")
    p = best.x
    dof = len(y) - n_params
    s = math.sqrt(float(np.sum((prob.model(p) - y) ** 2)) / dof)
    noise = pooled_noise(cells)
    lm = dict(zip(names, np.concatenate(([0.0], p[5:])).tolist()))
    fit = SharedJointFit(baseline=base, names=names, E=math.exp(p[0]), A=math.exp(p[1] + p[2] * lnN.mean()),
                         alpha=float(p[2]), B=math.exp(p[3] + p[4] * lnD.mean()), beta=float(p[4]), log_m=lm,
                         residual_se=s, dof=dof, n_cells={n: len(c.keys) for n, c in zip(names, cells)}, noise=noise,
                         settings={"law": "shared-joint", "n_bootstrap": opts.n_bootstrap, "level": opts.level,
                                   "seed": opts.seed})
    if opts.n_bootstrap:
        rng = np.random.default_rng([opts.seed, 11])
        floor = noise.sd / np.sqrt(count) if noise is not None else np.zeros(len(y))
        # the noise drawn before its scales (the order of the fits on record; the other laws draw scales first)
        Y = prob.model(p)[None, :] + rng.standard_normal((opts.n_bootstrap, len(y))) * noise_scales(
            rng, opts.n_bootstrap, s, dof, floor)
        samples = np.full((opts.n_bootstrap, len(p)), np.nan)
        for i, yb in enumerate(Y):
            res = prob.solve(yb, [p])
            if res is not None:
                samples[i] = res.x
        fit.alpha_ci = quantile_interval(samples[:, 2], opts.level)
        fit.beta_ci = quantile_interval(samples[:, 4], opts.level)
        for j, name in enumerate(names[1:]):
            ci = quantile_interval(samples[:, 5 + j], opts.level)
            fit.m_ci[name] = None if ci is None else (math.exp(ci[0]), math.exp(ci[1]))
    for name in names[1:]:
        ci, m = fit.m_ci.get(name), math.exp(lm[name])
        if ci is not None and not ci[0] <= m <= ci[1]:
            fit.warnings.append(f"{name}: the multiplier {m:.3g} lies outside its interval [{ci[0]:.3g}, "
                                f"{ci[1]:.3g}] (a skewed bootstrap); trust the interval")
    return fit


def format_shared_joint(fit: SharedJointFit, source: str) -> str:
    """The console summary: the shared surface and one line per series."""

    def ci(v: tuple[float, float] | None) -> str:
        return "" if v is None else f" [{v[0]:.3g}, {v[1]:.3g}]"

    lines = [f"shared joint fit of {source}: L = E + A (m N)^-alpha + B D^-beta, baseline {fit.baseline}; "
             f"{fit.settings['n_bootstrap']} bootstrap replicates, {fit.settings['level']:.0%} intervals",
             f"shared surface: E {fit.E:.4g}, A {fit.A:.3g}, alpha {fit.alpha:.3g}{ci(fit.alpha_ci)}, B {fit.B:.3g}, "
             f"beta {fit.beta:.3g}{ci(fit.beta_ci)}; residual SE {fit.residual_se:.2%} ({fit.dof} degrees of freedom)"]
    for name in fit.names:
        if name == fit.baseline:
            lines.append(f"  {name}: the baseline (m = 1), {fit.n_cells[name]} points")
            continue
        m = math.exp(fit.log_m[name])
        lines.append(f"  {name}: each parameter worth {m:.3g}x{ci(fit.m_ci.get(name))} one of {fit.baseline}'s "
                     f"({fit.n_cells[name]} points)")
    lines.append(fit.noise.describe() if fit.noise else "run-to-run noise: not measured (one seed per point)")
    lines += [f"warning: {w}" for w in fit.warnings]
    return "\n".join(lines)
