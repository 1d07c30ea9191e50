"""The joint loss law L(N, D) = E + A / N^alpha + B / D^beta per series, fitted as Hoffmann et al. (2022,
approach 3) did, with bootstrap intervals.

How the fit works, and why:

* **Huber loss on log residuals.** The fit minimises sum_i Huber_delta(ln L_i - ln L(N_i, D_i)), delta = 1e-3
  by default as in Hoffmann et al.: log residuals weigh a 4.8 and a 3.3 loss alike, and the Huber loss keeps
  one diverged or mis-logged run from bending the surface. scipy's trust-region least squares with its
  ``huber`` loss minimises exactly this (up to a factor 2), within bounds.
* **Parametrisation.** ln L = logsumexp(e, a - alpha u, b - beta v) with u = ln(N / N0), v = ln(D / D0), N0 and
  D0 the geometric means of the data: all five parameters are O(1), which keeps the problem well scaled.
  E = exp(e), A = exp(a + alpha ln N0), B = exp(b + beta ln D0). Bounds: 0 <= alpha, beta <= 3 and E below
  the smallest observed loss.
* **Many starts.** The surface has long valleys (E trades off against A and alpha). A grid of starting points
  (E, alpha, beta and the split of the reducible loss between the N and D terms; 128 points) is scored in one
  vectorised evaluation of the objective, and the solver runs from the best of them; the lowest optimum wins.
* **Seeds.** Runs of one cell (same N and D, different seeds) are fitted through their mean log-loss; the
  pooled seed-to-seed spread (see :mod:`seeds`) is a floor on the bootstrap noise of each cell mean.
* **Bootstrap.** Parametric, as for the compute law: each replicate adds Gaussian log-space noise to the
  fitted surface and refits from the point estimate. The noise of a cell mean is the larger of the residual
  standard error and the run-to-run noise of a mean of that many seeds, each drawn from its own sampling
  distribution (s^2 * dof / chi2(dof)), which widens the intervals honestly when either is poorly known.
  Percentile intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

from lowrank_lm.errors import UserError
from lowrank_lm.stats.bootstrap import note_failed_refits, quantile_interval, replicates
from lowrank_lm.stats.multistart import multistart
from lowrank_lm.stats.seeds import Cells, SeedNoise, group_cells, pooled_noise

EXPONENT_MAX = 3.0
MIN_CELLS = 6
"""Five parameters need at least this many distinct (N, D) cells (one residual degree of freedom)."""
N_COLUMNS = {"total": "params", "non-embedding": "params_non_embedding"}


@dataclass
class JointSeries:
    """The runs of one series: parameters N, tokens D, training FLOPs C (when known), loss, seed, budget."""

    name: str
    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    C: np.ndarray | None = None
    seeds: list[str] = field(default_factory=list)
    budgets: list[str] = field(default_factory=list)
    structure: str | None = None
    fraction: float | None = None

    @property
    def n(self) -> int:
        return len(self.N)

    def cells(self) -> Cells:
        """Runs grouped by (N, D): the seeds of one configuration."""
        return group_cells(list(zip(self.N.tolist(), self.D.tolist())), self.loss)


def _column(row: dict[str, Any], key: str, where: str) -> float:
    text = str(row.get(key) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: column {key} holds {text!r}, not a number; fill it in or drop the row") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{where}: column {key} must be a positive number for a log-space fit (got {text!r})")
    return value


def series_from_rows(rows: list[dict[str, Any]], source: str) -> dict[str, JointSeries]:
    """Group rows (``x`` = N, ``loss``, and the raw ``tokens``, ``flops``, ``seed``, ``budget`` columns) by series."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["series"], []).append(r)
    out = {}
    for name, rs in groups.items():
        D = np.array([_column(r, "tokens", f"{source} ({name})") for r in rs])
        has_flops = all(str(r.get("flops") or "").strip() for r in rs)
        C = np.array([_column(r, "flops", f"{source} ({name})") for r in rs]) if has_flops else None
        structures = {str(r.get("structure") or "").strip() for r in rs}
        fractions = {str(r.get("fraction") or "").strip() for r in rs}
        structure = structures.pop() if len(structures) == 1 else None
        frac_text = fractions.pop() if len(fractions) == 1 else ""
        out[name] = JointSeries(
            name=name, N=np.array([r["x"] for r in rs], float), D=D, loss=np.array([r["loss"] for r in rs], float),
            C=C, seeds=[str(r.get("seed") or "").strip() for r in rs],
            budgets=[str(r.get("budget") or "").strip() for r in rs], structure=structure or None,
            fraction=float(frac_text) if frac_text else None)
    return out


@dataclass
class JointOptions:
    """Bootstrap size, interval level, random seed and the Huber threshold (on log residuals)."""

    n_bootstrap: int = 400
    level: float = 0.95
    seed: int = 0
    huber_delta: float = 1e-3


@dataclass
class FlopsPerToken:
    """Training FLOPs per token as a power of N, fitted on the runs: C / D = k * N^gamma."""

    log_k: float
    gamma: float

    def tokens(self, C: np.ndarray | float, N: np.ndarray | float) -> np.ndarray:
        """The tokens D that spend compute C on a model of N parameters."""
        return np.asarray(C) / np.exp(self.log_k + self.gamma * np.log(N))


@dataclass
class JointFit:
    """The fit of one series. ``samples`` holds (E, ln A, alpha, ln B, beta) per bootstrap replicate."""

    name: str
    n_points: int
    n_cells: int
    E: float
    A: float
    alpha: float
    B: float
    beta: float
    alpha_ci: tuple[float, float] | None = None
    beta_ci: tuple[float, float] | None = None
    E_ci: tuple[float, float] | None = None
    residual_se: float = math.nan
    dof: int = 0
    N_range: tuple[float, float] = (math.nan, math.nan)
    D_range: tuple[float, float] = (math.nan, math.nan)
    C_range: tuple[float, float] | None = None
    flops_per_token: FlopsPerToken | None = None
    structure: str | None = None
    fraction: float | None = None
    warnings: list[str] = field(default_factory=list)
    samples: np.ndarray | None = field(default=None, repr=False)

    @property
    def params(self) -> np.ndarray:
        """(E, ln A, alpha, ln B, beta) of the point estimate."""
        return np.array([self.E, math.log(self.A), self.alpha, math.log(self.B), self.beta])

    def predict(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        """The fitted loss at N parameters and D tokens."""
        return surface(self.params[None, :], np.asarray(N, float), np.asarray(D, float))[0]

    def ok_samples(self) -> np.ndarray:
        """The successful bootstrap replicates (shape (replicates, 5); empty when there are none)."""
        if self.samples is None:
            return np.empty((0, 5))
        return self.samples[np.isfinite(self.samples).all(axis=1)]

    def to_json(self, with_samples: bool = True) -> dict[str, Any]:
        """The issue's contract keys first, then the extras the planner and plots need."""

        def pair(v: tuple[float, float] | None) -> list[float] | None:
            return None if v is None else [float(v[0]), float(v[1])]

        out: dict[str, Any] = {
            "law": "joint", "E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta,
            "alpha_ci": pair(self.alpha_ci), "beta_ci": pair(self.beta_ci), "n_points": self.n_points,
            "n_cells": self.n_cells, "E_ci": pair(self.E_ci), "residual_se": self.residual_se, "dof": self.dof,
            "N_range": list(self.N_range), "D_range": list(self.D_range),
            "C_range": list(self.C_range) if self.C_range else None,
            "flops_per_token": None if self.flops_per_token is None else
            {"log_k": self.flops_per_token.log_k, "gamma": self.flops_per_token.gamma},
            "structure": self.structure, "fraction": self.fraction, "warnings": list(self.warnings)}
        if with_samples:
            out["samples"] = [[float(f"{v:.7g}") for v in s] for s in self.ok_samples()]
        return out

    @staticmethod
    def from_json(name: str, d: dict[str, Any]) -> JointFit:
        """Rebuild a fit from :meth:`to_json` output (the planner reads fit files this way)."""
        fpt = d.get("flops_per_token")
        samples = np.array(d["samples"], float).reshape(-1, 5) if d.get("samples") else None
        return JointFit(
            name=name, n_points=int(d["n_points"]), n_cells=int(d.get("n_cells") or d["n_points"]),
            E=float(d["E"]), A=float(d["A"]), alpha=float(d["alpha"]), B=float(d["B"]), beta=float(d["beta"]),
            alpha_ci=tuple(d["alpha_ci"]) if d.get("alpha_ci") else None,  # type: ignore[arg-type]
            beta_ci=tuple(d["beta_ci"]) if d.get("beta_ci") else None,  # type: ignore[arg-type]
            residual_se=float(d.get("residual_se") or math.nan), dof=int(d.get("dof") or 0),
            N_range=tuple(d["N_range"]), D_range=tuple(d["D_range"]),  # type: ignore[arg-type]
            C_range=tuple(d["C_range"]) if d.get("C_range") else None,  # type: ignore[arg-type]
            flops_per_token=FlopsPerToken(float(fpt["log_k"]), float(fpt["gamma"])) if fpt else None,
            structure=d.get("structure"), fraction=d.get("fraction"), warnings=list(d.get("warnings") or []),
            samples=samples)


@dataclass
class JointResult:
    """Every series' joint fit, the pooled seed noise and the settings."""

    series: dict[str, JointFit]
    noise: SeedNoise | None = None
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self, with_samples: bool = True) -> dict[str, Any]:
        return {"series": {k: v.to_json(with_samples) for k, v in self.series.items()},
                "seed_noise": self.noise.to_json() if self.noise else None, "warnings": self.warnings,
                "settings": self.settings}


def surface(p: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Loss for each parameter row (E, ln A, alpha, ln B, beta) of ``p`` at (N, D): shape (rows, points)."""
    lnN, lnD = np.log(N).reshape(1, -1), np.log(D).reshape(1, -1)
    return (p[:, :1] + np.exp(p[:, 1:2] - p[:, 2:3] * lnN) + np.exp(p[:, 3:4] - p[:, 4:5] * lnD))


# --------------------------------------------------------------------------- one least-squares problem


@dataclass
class _Problem:
    """Cell means of one series in normalised coordinates: u = ln N - ln N0, v = ln D - ln D0."""

    u: np.ndarray
    v: np.ndarray
    lnN0: float
    lnD0: float
    delta: float

    def model(self, p: np.ndarray) -> np.ndarray:
        e, a, al, b, be = p
        return np.logaddexp(e, np.logaddexp(a - al * self.u, b - be * self.v))

    def jac(self, p: np.ndarray) -> np.ndarray:
        e, a, al, b, be = p
        zn, zd = a - al * self.u, b - be * self.v
        m = np.logaddexp(e, np.logaddexp(zn, zd))
        we, wn, wd = np.exp(e - m), np.exp(zn - m), np.exp(zd - m)  # each term's share of the loss
        return np.column_stack([we, wn, -self.u * wn, wd, -self.v * wd])

    def bounds(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = float(y.min())
        return (np.array([top - 30.0, -40.0, 0.0, -40.0, 0.0]),
                np.array([top - 1e-6, 40.0, EXPONENT_MAX, 40.0, EXPONENT_MAX]))

    def grid(self, y: np.ndarray) -> np.ndarray:
        """Starting points: E share x alpha x beta x split of the reducible loss between the two terms."""
        lmin, lmid = float(np.exp(y.min())), float(np.exp(y.mean()))
        rows = []
        for e_share, al, be, split in product((0.1, 0.4, 0.7, 0.9), (0.1, 0.3, 0.6, 1.2), (0.1, 0.3, 0.6, 1.2),
                                              (0.25, 0.75)):
            E = e_share * lmin
            red = max(lmid - E, 1e-6 * lmid)
            rows.append([math.log(E), math.log(split * red), al, math.log((1 - split) * red), be])
        return np.array(rows)

    def objective(self, P: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The Huber objective of every parameter row of ``P`` at once."""
        e, a, al, b, be = (P[:, k:k + 1] for k in range(5))
        m = np.logaddexp(e, np.logaddexp(a - al * self.u[None], b - be * self.v[None]))
        r = np.abs(m - y[None])
        d = self.delta
        return np.where(r <= d, 0.5 * r**2, d * (r - 0.5 * d)).sum(axis=1)

    def solve(self, y: np.ndarray, starts: np.ndarray) -> Any:
        """Bounded Huber least squares from each start; the lowest cost wins (None if all failed)."""
        return multistart(lambda p: self.model(p) - y, self.jac, starts, self.bounds(y), loss="huber",
                          f_scale=self.delta, ftol=1e-10, xtol=1e-10, gtol=1e-10, max_nfev=300)

    def batch_model(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model and Jacobian for every parameter row of ``P``: shapes (rows, cells) and (rows, cells, 5)."""
        e, a, al, b, be = (P[:, k:k + 1] for k in range(5))
        zn, zd = a - al * self.u[None], b - be * self.v[None]
        m = np.logaddexp(e, np.logaddexp(zn, zd))
        we, wn, wd = np.exp(e - m), np.exp(zn - m), np.exp(zd - m)
        J = np.stack([we, wn, -self.u[None] * wn, wd, -self.v[None] * wd], axis=-1)
        return m, J

    def huber(self, r: np.ndarray) -> np.ndarray:
        a, d = np.abs(r), self.delta
        return np.where(a <= d, 0.5 * r**2, d * (a - 0.5 * d)).sum(axis=-1)

    def solve_many(self, Y: np.ndarray, p0: np.ndarray, iterations: int = 300) -> np.ndarray:
        """Refit every row of ``Y`` (replicates x cells) from ``p0`` at once: shape (replicates, 5).

        The bootstrap's hundreds of refits are the slow part of a fit, and scipy solves one problem per
        call, so the refits run as one batched Levenberg-Marquardt iteration in numpy: iteratively
        reweighted least squares for the Huber loss (weight 1 inside delta, delta/|r| outside), a damping
        factor per replicate, steps projected onto the bounds. Tests check it against scipy's solver; why it
        stays beside scipy (scipy alone makes `fit --law joint` several times slower, past the 3x bar) is
        measured in docs/scaling.md (scripts/joint_solvers.py).
        The few rows it has not converged after ``iterations`` steps go to scipy one by one; rows that fail
        there too are NaN.
        """
        R = Y.shape[0]
        lo, hi = self.bounds(Y[0])
        hi = np.tile(hi, (R, 1))
        hi[:, 0] = Y.min(axis=1) - 1e-6  # each replicate's E stays below its own smallest loss
        P = np.clip(np.tile(p0, (R, 1)), lo, hi)
        m, J = self.batch_model(P)
        cost = self.huber(m - Y)
        lam = np.full(R, 1e-3)
        done = np.zeros(R, bool)
        eye = np.eye(5)
        # a step far out can overflow exp(); its cost is then NaN and the step is rejected
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(iterations):
                act = ~done
                if not act.any():
                    break
                r = m[act] - Y[act]
                w = np.where(np.abs(r) <= self.delta, 1.0, self.delta / np.maximum(np.abs(r), 1e-300))
                Ja = J[act]
                H = np.einsum("rni,rn,rnj->rij", Ja, w, Ja)
                g = np.einsum("rni,rn,rn->ri", Ja, w, r)
                damp = lam[act, None, None] * (H * eye + 1e-12 * eye)
                step = np.linalg.solve(H + damp, -g[..., None])[..., 0]
                P_new = np.clip(P[act] + step, lo, hi[act])
                m_new, J_new = self.batch_model(P_new)
                cost_new = self.huber(m_new - Y[act])
                better = cost_new <= cost[act]
                idx = np.flatnonzero(act)
                gain = (cost[act] - cost_new) / np.maximum(cost[act], 1e-300)
                moved = np.abs(P_new - P[act]).max(axis=1)
                acc = idx[better]
                P[acc], m[acc], J[acc], cost[acc] = P_new[better], m_new[better], J_new[better], cost_new[better]
                lam[acc] = np.maximum(lam[acc] / 3, 1e-12)
                lam[idx[~better]] *= 4
                done[idx[(better & ((gain < 1e-10) | (moved < 1e-8))) | (lam[idx] > 1e10)]] = True
        for r in np.flatnonzero(~done):  # the few slow ones (residuals hovering at delta): scipy, one by one
            res = self.solve(Y[r], P[r][None, :])
            P[r] = res.x if res is not None else np.nan
        P[~np.isfinite(P).all(axis=1) | (P[:, 0] >= Y.min(axis=1))] = np.nan
        return P

    def to_natural(self, p: np.ndarray) -> np.ndarray:
        """(e, a, alpha, b, beta) -> (E, ln A, alpha, ln B, beta) in the data's own units."""
        e, a, al, b, be = p
        return np.array([math.exp(e), a + al * self.lnN0, al, b + be * self.lnD0, be])


def flops_per_token(ser: JointSeries) -> FlopsPerToken | None:
    """C / D = k N^gamma by least squares in logs (None without FLOPs or with a single model size)."""
    if ser.C is None or len(np.unique(ser.N)) < 2:
        return None
    gamma, log_k = np.polyfit(np.log(ser.N), np.log(ser.C / ser.D), 1)
    return FlopsPerToken(float(log_k), float(gamma))


def unfit_reason(ser: JointSeries) -> str | None:
    """Why the joint law cannot be fitted to ``ser`` (None when it can)."""
    cells = ser.cells()
    if len(cells.keys) < MIN_CELLS:
        return (f"series {ser.name}: {len(cells.keys)} distinct (N, D) points; the joint law has 5 parameters and "
                f"needs at least {MIN_CELLS} (sizes x budgets)")
    if len(np.unique(ser.N)) < 2 or len(np.unique(ser.D)) < 2:
        return (f"series {ser.name}: N or D takes a single value, so its exponent cannot be fitted; the joint law "
                "needs several sizes and several token budgets")
    if len(np.unique(ser.C if ser.C is not None else ser.N * ser.D)) < 2:
        return (f"series {ser.name}: every run has the same compute, so N and D move together and the joint law "
                "cannot separate them; add budgets")
    return None


def fit_series(ser: JointSeries, opts: JointOptions, noise: SeedNoise | None, rng: np.random.Generator,
               starts_kept: int = 6) -> JointFit:
    """Fit and bootstrap one series (see the module docstring)."""
    reason = unfit_reason(ser)
    if reason is not None:
        raise UserError(f"{reason}; or drop the series with --series")
    cells = ser.cells()
    n_cells = len(cells.keys)
    N_cell = np.array([k[0] for k in cells.keys])  # type: ignore[index]
    D_cell = np.array([k[1] for k in cells.keys])  # type: ignore[index]
    lnN, lnD = np.log(N_cell), np.log(D_cell)
    prob = _Problem(lnN - lnN.mean(), lnD - lnD.mean(), float(lnN.mean()), float(lnD.mean()), opts.huber_delta)
    y = cells.mean_log
    grid = prob.grid(y)
    lo, hi = prob.bounds(y)
    grid = np.clip(grid, lo, hi)
    best_starts = grid[np.argsort(prob.objective(grid, y))[:starts_kept]]
    best = prob.solve(y, best_starts)
    if best is None:
        raise UserError(f"series {ser.name}: the joint fit failed from every starting point; check the data (a "
                        "loss that rises with N or D cannot be fitted)")
    p_hat = best.x
    fitted = prob.model(p_hat)
    dof = n_cells - 5
    s = math.sqrt(float(np.sum((fitted - y) ** 2)) / dof) if dof > 0 else 0.0
    nat = prob.to_natural(p_hat)
    fit = JointFit(name=ser.name, n_points=ser.n, n_cells=n_cells, E=float(nat[0]), A=float(math.exp(nat[1])),
                   alpha=float(nat[2]), B=float(math.exp(nat[3])), beta=float(nat[4]), residual_se=s, dof=dof,
                   N_range=(float(ser.N.min()), float(ser.N.max())), D_range=(float(ser.D.min()), float(ser.D.max())),
                   C_range=(float(ser.C.min()), float(ser.C.max())) if ser.C is not None else None,
                   flops_per_token=flops_per_token(ser), structure=ser.structure, fraction=ser.fraction)
    if dof == 0 and noise is None:
        fit.warnings.append("6 cells and no seeds: no residual degrees of freedom, so no intervals")
    for k, name in ((2, "alpha"), (4, "beta")):
        if p_hat[k] <= 1e-6 or p_hat[k] >= EXPONENT_MAX * (1 - 1e-6):
            fit.warnings.append(f"{name} is at a bound ({p_hat[k]:.3g}): the data do not identify it")
    if p_hat[0] <= lo[0] + 1e-6:
        fit.warnings.append("E is at its lower bound: the data show no irreducible loss")
    _bootstrap(fit, prob, y, p_hat, cells.count, s, dof, noise, opts, rng)
    for name, ci, value in (("alpha", fit.alpha_ci, fit.alpha), ("beta", fit.beta_ci, fit.beta)):
        if ci is not None and ci[1] - ci[0] > value:
            fit.warnings.append(f"{name} is poorly determined: its interval is wider than its value")
    return fit


def _bootstrap(fit: JointFit, prob: _Problem, y: np.ndarray, p_hat: np.ndarray, count: np.ndarray, s: float,
               dof: int, noise: SeedNoise | None, opts: JointOptions, rng: np.random.Generator) -> None:
    """Parametric bootstrap of one fit: fills ``fit.samples`` and the intervals."""
    B = opts.n_bootstrap
    if B == 0 or (dof <= 0 and noise is None):
        return
    fitted = prob.model(p_hat)
    seed_sd, seed_dof = (noise.sd, noise.dof) if noise is not None else (0.0, 0)
    Y = replicates(rng, fitted, B, s, dof, np.zeros(len(y)), seed_sd, seed_dof, count)
    refits = prob.solve_many(Y, p_hat)
    ok = np.isfinite(refits).all(axis=1)
    samples = np.full((B, 5), np.nan)
    samples[ok] = np.array([prob.to_natural(q) for q in refits[ok]]).reshape(-1, 5)
    note_failed_refits(samples, fit.warnings)
    fit.samples = samples
    fit.alpha_ci = quantile_interval(samples[:, 2], opts.level)
    fit.beta_ci = quantile_interval(samples[:, 4], opts.level)
    fit.E_ci = quantile_interval(samples[:, 0], opts.level)


def fit_joint(series: dict[str, JointSeries], opts: JointOptions | None = None,
              skip_unfit: bool = False) -> JointResult:
    """Fit L(N, D) per series, with the run-to-run noise pooled over every series entering each bootstrap.

    A series the law cannot be fitted to is an error, or with ``skip_unfit`` a warning (its IsoFLOP profiles
    and its seeds' noise still count).
    """
    opts = opts or JointOptions()
    if not 0 < opts.level < 1:
        raise UserError(f"the interval level must be between 0 and 1, got {opts.level}")
    if opts.n_bootstrap < 0:
        raise UserError("the number of bootstrap replicates cannot be negative")
    noise = pooled_noise([s.cells() for s in series.values()])
    fits = {}
    warnings = []
    for k, (name, ser) in enumerate(series.items()):
        reason = unfit_reason(ser)
        if reason is not None and skip_unfit:
            warnings.append(f"{reason}: no joint fit")
            continue
        rng = np.random.default_rng([opts.seed, k])
        fits[name] = fit_series(ser, opts, noise, rng)
    settings = {"law": "joint", "n_bootstrap": opts.n_bootstrap, "level": opts.level, "seed": opts.seed,
                "huber_delta": opts.huber_delta, "n_runs": sum(len(s.loss) for s in series.values()),
                "n_series": len(series)}
    return JointResult(series=fits, noise=noise, warnings=warnings, settings=settings)
