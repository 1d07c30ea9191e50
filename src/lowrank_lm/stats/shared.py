"""Shared-exponent fits: every series on one curve, L(C) = E + A (k_s C)^(-alpha), one compute multiplier each.

Why: with a handful of sizes per curve, a separate (E, A, alpha) per series is ill-conditioned, and two
exponents fitted apart are rarely distinguishable even where one structure is lower in every cell. The
remedy of the scaling-law literature is to share the curve's shape (E, A, alpha) between all series and give
each series one efficiency factor: its *compute multiplier* k_s (k = 1 for the baseline). A series with
multiplier k reaches at C FLOPs the loss the baseline reaches at k C FLOPs: k = 1.08 means "worth 1.08x the
compute of dense", k = 0.8 that it needs 1/0.8 = 1.25x the FLOPs for the same loss. One series point is
enough for a multiplier once the others fix the curve, which is how the paper's single-size structures get one.

How the fit works (the same conventions as :mod:`fit`):

* Log residuals, normalised compute x = ln C - mean ln C, so ln L = ln(E + exp(b - alpha (x + ln k_s))).
  Parameters (E, b, alpha, ln k_s for every series but the baseline), bounded: 0 <= E < min L,
  0 <= alpha <= 5, |ln k| <= 25. scipy's trust-region solver runs from a grid of starts (E x alpha, each with
  b from the baseline's points and ln k from each series' offset) through :func:`multistart.multistart`.
* Bootstrap: parametric, as the compute law's: Gaussian log-space noise around the fitted curve, its scale
  drawn per replicate from its sampling distribution and floored at each point's stated error, which for a
  table with seeds is the measured seed-to-seed noise of the point's mean (:func:`seeds.average_seeds`).
  Percentile intervals of ln k, reported as intervals of k.
* Consistency: the series with three or more compute values are also fitted with their own exponents (one
  shared E, :func:`fit.fit_all`). A series whose own exponent interval excludes the shared exponent, or an
  F test of the nested models at p < 0.05, gives a warning: then a multiplier is not one number but changes
  with compute, and the table says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowrank_lm.errors import UserError
from lowrank_lm.stats.bootstrap import noise_scales, note_failed_refits, quantile_interval
from lowrank_lm.stats.fit import (
    ALPHA_MAX,
    FitOptions,
    Series,
    StackedSeries,
    fit_all,
)
from lowrank_lm.stats.multistart import multistart

LOG_K_MAX = 25.0
"""Bound on |ln k|: a multiplier beyond e^25 (7e10) means the series does not share the curve at all."""
CONSISTENCY_P = 0.05
"""An F test of separate against shared exponents below this p-value warns that the exponent is not shared."""


@dataclass
class _Problem(StackedSeries):
    """All points in normalised compute; series 0 is the baseline (ln k = 0)."""

    @property
    def n_params(self) -> int:
        return 2 + len(self.series)

    def _log_k(self, p: np.ndarray) -> np.ndarray:
        return np.concatenate(([0.0], p[3:]))

    def model(self, p: np.ndarray) -> np.ndarray:
        """ln(E + exp(b - alpha (x + ln k))) for every point, without overflow."""
        E, b, alpha = p[:3]
        z = b - alpha * (self.x + self._log_k(p)[self.idx])
        return np.logaddexp(math.log(E) if E > 0 else -np.inf, z)

    def jac(self, p: np.ndarray) -> np.ndarray:
        E, b, alpha = p[:3]
        shifted = self.x + self._log_k(p)[self.idx]
        z = b - alpha * shifted
        m = np.logaddexp(math.log(E) if E > 0 else -np.inf, z)
        w = np.exp(z - m)  # share of the reducible term in the loss
        cols_k = np.zeros((len(self.x), len(self.series) - 1))
        rows = np.flatnonzero(self.idx > 0)
        cols_k[rows, self.idx[rows] - 1] = -alpha * w[rows]
        return np.column_stack([np.exp(-m), w, -shifted * w, cols_k])

    def bounds(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        extra = len(self.series) - 1
        return (np.array([0.0, -60.0, 0.0] + [-LOG_K_MAX] * extra),
                np.array([float(np.exp(y.min())), 60.0, ALPHA_MAX] + [LOG_K_MAX] * extra))

    def starts(self) -> list[np.ndarray]:
        """For each E on a grid and each alpha: b from the baseline's points, ln k from each series' offset."""
        loss = np.exp(self.y)
        lmin = float(loss.min())
        out = []
        for e0 in (0.0, 0.5 * lmin, 0.8 * lmin, 0.95 * lmin):
            red = np.log(loss - e0)
            for a0 in (0.05, 0.15, 0.3, 0.6, 1.0):
                base = self.idx == 0
                b = float(np.mean(red[base] + a0 * self.x[base]))
                lk = [float(np.mean((b - red[self.idx == k]) / a0 - self.x[self.idx == k]))
                      for k in range(1, len(self.series))]
                out.append(np.array([e0, b, a0, *np.clip(lk, -LOG_K_MAX + 1, LOG_K_MAX - 1)]))
        return out

    def solve(self, y: np.ndarray, starts: list[np.ndarray]) -> Any:
        """Multistart least squares. A run may stop at max_nfev while alpha crawls towards 0 along the valley
        where the curve is nearly linear in ln C (noise hides its curvature); the multipliers, horizontal
        shifts of that curve, are fixed long before, so such a run counts (the lowest cost still wins)."""
        return multistart(lambda p: self.model(p) - y, self.jac, starts, self.bounds(y), accept_unconverged=True,
                          max_nfev=300, ftol=1e-12, xtol=1e-12, gtol=1e-12)


@dataclass
class SharedFit:
    """The shared curve (E, A, alpha), each series' compute multiplier with its interval, and the checks.

    ``samples`` holds (E, ln A, alpha, ln k of every series in ``names`` order) per bootstrap replicate
    (the baseline's column is 0; NaN rows failed)."""

    baseline: str
    names: list[str]
    E: float
    A: float
    alpha: float
    log_k: dict[str, float]
    n_points: dict[str, int]
    x_range: dict[str, tuple[float, float]]
    residual_se: float
    dof: int
    E_ci: tuple[float, float] | None = None
    alpha_ci: tuple[float, float] | None = None
    k_ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    consistency: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    samples: np.ndarray | None = field(default=None, repr=False)

    def multiplier(self, name: str) -> float:
        return math.exp(self.log_k[name])

    def predict(self, name: str, x: np.ndarray | float) -> np.ndarray:
        """The loss of series ``name`` at compute ``x``: E + A (k x)^-alpha."""
        return self.E + self.A * np.power(self.multiplier(name) * np.asarray(x, float), -self.alpha)

    def ok_samples(self) -> np.ndarray:
        if self.samples is None:
            return np.empty((0, 3 + len(self.names)))
        return self.samples[np.isfinite(self.samples).all(axis=1)]

    def sample_losses(self, name: str, x: np.ndarray) -> np.ndarray:
        """The loss of ``name`` at ``x`` for every successful replicate: shape (replicates, len(x))."""
        s = self.ok_samples()
        lk = s[:, 3 + self.names.index(name)]
        return s[:, :1] + np.exp(s[:, 1:2] - s[:, 2:3] * (lk[:, None] + np.log(np.asarray(x, float))[None, :]))

    def to_json(self, with_samples: bool = True) -> dict[str, Any]:
        """The issue's contract keys (baseline, alpha, series: compute_multiplier, ci) first, then the rest."""

        def pair(v: tuple[float, float] | None) -> list[float] | None:
            return None if v is None else [float(v[0]), float(v[1])]

        series = {n: {"compute_multiplier": self.multiplier(n), "ci": pair(self.k_ci.get(n)),
                      "n_points": self.n_points[n], "x_range": list(self.x_range[n])} for n in self.names}
        out: dict[str, Any] = {"law": "shared", "baseline": self.baseline, "alpha": self.alpha,
                               "alpha_ci": pair(self.alpha_ci), "E": self.E, "E_ci": pair(self.E_ci), "A": self.A,
                               "series": series, "residual_se": self.residual_se, "dof": self.dof,
                               "consistency": self.consistency, "warnings": list(self.warnings),
                               "settings": self.settings}
        if with_samples:
            out["samples"] = [[float(f"{v:.7g}") for v in row] for row in self.ok_samples()]
        return out

    @staticmethod
    def from_json(d: dict[str, Any]) -> SharedFit:
        """Rebuild a fit from :meth:`to_json` output (``plan`` reads fit files this way)."""
        names = list(d["series"])
        samples = np.array(d["samples"], float).reshape(-1, 3 + len(names)) if d.get("samples") else None
        s = d["series"]
        return SharedFit(
            baseline=d["baseline"], names=names, E=float(d["E"]), A=float(d["A"]), alpha=float(d["alpha"]),
            log_k={n: math.log(float(s[n]["compute_multiplier"])) for n in names},
            n_points={n: int(s[n]["n_points"]) for n in names},
            x_range={n: (float(s[n]["x_range"][0]), float(s[n]["x_range"][1])) for n in names},
            residual_se=float(d.get("residual_se") or 0.0), dof=int(d.get("dof") or 0),
            E_ci=tuple(d["E_ci"]) if d.get("E_ci") else None,  # type: ignore[arg-type]
            alpha_ci=tuple(d["alpha_ci"]) if d.get("alpha_ci") else None,  # type: ignore[arg-type]
            k_ci={n: tuple(s[n]["ci"]) if s[n].get("ci") else None for n in names},  # type: ignore[misc]
            consistency=d.get("consistency") or {}, warnings=list(d.get("warnings") or []),
            settings=d.get("settings") or {}, samples=samples)


def _order(series: dict[str, Series], baseline: str | None) -> list[str]:
    """The series names, baseline first; a one-line error when the baseline is missing or unknown."""
    from lowrank_lm.stats.compare import default_baseline

    names = list(series)
    base = baseline if baseline is not None else default_baseline(names)
    if base is None:
        raise UserError(f"no baseline series: name one with --baseline (have: {', '.join(names)})")
    if base not in series:
        raise UserError(f"--baseline {base}: no such series (have: {', '.join(names)})")
    if len(names) < 2:
        raise UserError(f"the shared law compares series with {base}; give at least one other series")
    if not any(len(np.unique(s.x)) >= 3 for s in series.values()):
        raise UserError("the shared law needs one series with at least 3 compute values to fix the curve's shape "
                        "(E, A, alpha); run more sizes")
    return [base] + [n for n in names if n != base]


def fit_shared(series: dict[str, Series], baseline: str | None = None, opts: FitOptions | None = None,
               check: bool = True) -> SharedFit:
    """Fit L = E + A (k_s C)^-alpha to every series at once, bootstrap it and (``check``) test the sharing."""
    opts = opts or FitOptions()
    if not 0 < opts.level < 1:
        raise UserError(f"the interval level must be between 0 and 1, got {opts.level}")
    names = _order(series, baseline)
    prob = _Problem([series[n] for n in names])
    best = prob.solve(prob.y, prob.starts())
    if best is None:
        raise UserError("the shared-exponent fit failed from every starting point; check the data (a loss that "
                        "rises with compute cannot be fitted)")
    p_hat = best.x
    dof = len(prob.y) - prob.n_params
    s = math.sqrt(float(np.sum((prob.model(p_hat) - prob.y) ** 2)) / dof) if dof > 0 else 0.0
    log_k = dict(zip(names, prob._log_k(p_hat).tolist()))
    fit = SharedFit(baseline=names[0], names=names, E=float(p_hat[0]), A=float(math.exp(p_hat[1] + p_hat[2] * prob.c0)),
                    alpha=float(p_hat[2]), log_k=log_k, n_points={n: series[n].n for n in names},
                    x_range={n: (float(series[n].x.min()), float(series[n].x.max())) for n in names},
                    residual_se=s, dof=dof,
                    settings={"law": "shared", "n_bootstrap": opts.n_bootstrap, "level": opts.level,
                              "seed": opts.seed})
    _bootstrap(fit, prob, p_hat, dof, s, opts)
    fit.warnings += _notes(fit, prob, p_hat)
    if check:
        fit.consistency = consistency(series, fit, opts)
        fit.warnings += fit.consistency.get("warnings", [])
    return fit


def _bootstrap(fit: SharedFit, prob: _Problem, p_hat: np.ndarray, dof: int, s: float, opts: FitOptions) -> None:
    """Parametric bootstrap (see the module docstring): fills ``fit.samples`` and the intervals."""
    B = opts.n_bootstrap
    if B == 0:
        return
    if dof <= 0 and not np.any(prob.err > 0):
        fit.warnings.append("no residual degrees of freedom and no stated errors: no intervals")
        return
    rng = np.random.default_rng([opts.seed, 7])
    fitted = prob.model(p_hat)
    # the noise drawn before its scales: the order of the fits on record (docs/scaling.md); the others draw scales first
    Y = fitted[None, :] + rng.standard_normal((B, len(fitted))) * noise_scales(rng, B, s, dof, prob.err)
    samples = np.full((B, 3 + len(fit.names)), np.nan)
    for i in range(B):
        res = prob.solve(Y[i], [p_hat])
        if res is not None:
            q = res.x
            samples[i] = [q[0], q[1] + q[2] * prob.c0, q[2], *prob._log_k(q)]
    note_failed_refits(samples, fit.warnings)
    fit.samples = samples
    fit.E_ci = quantile_interval(samples[:, 0], opts.level)
    fit.alpha_ci = quantile_interval(samples[:, 2], opts.level)
    for j, name in enumerate(fit.names):
        ci = quantile_interval(samples[:, 3 + j], opts.level) if j > 0 else None
        fit.k_ci[name] = None if ci is None else (math.exp(ci[0]), math.exp(ci[1]))


def _notes(fit: SharedFit, prob: _Problem, p_hat: np.ndarray) -> list[str]:
    """What limits the estimates: parameters at a bound, estimates outside their interval, extrapolation."""
    notes = []
    lmin = float(np.exp(prob.y.min()))
    if lmin * (1 - 1e-4) <= fit.E:
        notes.append("E reached the smallest observed loss: the curve flattens inside the data")
    if fit.alpha <= 1e-6 or fit.alpha >= ALPHA_MAX * (1 - 1e-6):
        notes.append(f"the shared alpha is at a bound ({fit.alpha:.3g}): the data do not fix the curve's shape")
    base_lo, base_hi = fit.x_range[fit.baseline]
    for name in fit.names[1:]:
        k, ci = fit.multiplier(name), fit.k_ci.get(name)
        if abs(fit.log_k[name]) >= LOG_K_MAX * (1 - 1e-6):
            notes.append(f"{name}: its multiplier is at its bound; the series does not share the curve")
        if ci is not None and not ci[0] <= k <= ci[1]:
            notes.append(f"{name}: the multiplier {k:.3g} lies outside its interval [{ci[0]:.3g}, {ci[1]:.3g}]: "
                         "the bootstrap distribution is skewed by a boundary (E or alpha at a bound); trust the "
                         "interval")
        lo, hi = fit.x_range[name]
        if k * hi < base_lo or k * lo > base_hi:
            notes.append(f"{name}: its points at k x compute ({k * lo:.3g}-{k * hi:.3g}) lie outside the "
                         f"{fit.baseline} range ({base_lo:.3g}-{base_hi:.3g}); the multiplier extrapolates the curve")
    return notes


def consistency(series: dict[str, Series], fit: SharedFit, opts: FitOptions) -> dict[str, Any]:
    """Separate exponents (one shared E) against the shared one: per-series intervals and an F test."""
    from scipy.stats import f as f_dist

    eligible = {n: series[n] for n in fit.names if len(np.unique(series[n].x)) >= 3}
    out: dict[str, Any] = {"series": {}, "f_test": None, "warnings": []}
    if len(eligible) < 2:
        out["note"] = "not checked: needs two series with at least 3 compute values each"
        return out
    sep = fit_all(eligible, FitOptions(mode="shared", n_bootstrap=min(opts.n_bootstrap, 400), level=opts.level,
                                       seed=opts.seed))
    for name, f in sep.series.items():
        inside = None if f.alpha_ci is None else bool(f.alpha_ci[0] <= fit.alpha <= f.alpha_ci[1])
        out["series"][name] = {"alpha": f.alpha, "alpha_ci": list(f.alpha_ci) if f.alpha_ci else None,
                               "shared_alpha_inside": inside}
        if inside is False:
            assert f.alpha_ci is not None
            out["warnings"].append(
                f"{name}: its own exponent {f.alpha:.3g} [{f.alpha_ci[0]:.3g}, {f.alpha_ci[1]:.3g}] excludes the "
                f"shared {fit.alpha:.3g}; its multiplier changes with compute")
    restricted = fit if set(eligible) == set(fit.names) else \
        fit_shared(eligible, fit.baseline if fit.baseline in eligible else None, FitOptions(n_bootstrap=0), False)
    any_fit = next(iter(sep.series.values()))
    dof_f = int(any_fit.dof or 0)
    if dof_f > 0:
        rss_f = float(any_fit.residual_se or 0.0) ** 2 * dof_f
        rss_r = restricted.residual_se ** 2 * restricted.dof
        extra = restricted.dof - dof_f
        F = ((rss_r - rss_f) / extra) / (rss_f / dof_f) if rss_f > 0 and extra > 0 else math.nan
        p = float(f_dist.sf(F, extra, dof_f)) if math.isfinite(F) else None
        out["f_test"] = {"F": F if math.isfinite(F) else None, "dof": [extra, dof_f], "p": p}
        if p is not None and p < CONSISTENCY_P:
            out["warnings"].append(f"a shared exponent does not fit: separate exponents explain the points better "
                                   f"than noise would (F = {F:.3g}, p = {p:.2g}); the multipliers are averages "
                                   "over the compute range")
    return out
