"""Power-law fits of loss against compute, L(C) = E + A * C^(-alpha), with bootstrap intervals.

How the fit works, and why:

* **Log space.** The fit minimises sum_i (ln L_i - ln(E + A C_i^-alpha))^2. Run-to-run noise in LM losses
  is roughly proportional to the loss, and log residuals weigh a 3.3 and a 2.5 loss alike.
* **Normalised compute.** With x = ln(C / C0), C0 the geometric mean of the compute values, the model is
  L = E + exp(b - alpha x); b and alpha are O(1), which keeps the Jacobian well scaled. A = exp(b + alpha ln C0).
* **Bounds.** 0 <= E <= min(L) (an irreducible loss is neither negative nor above every observed loss),
  0 <= alpha <= 5. A bounded trust-region least-squares solver (scipy) runs from a grid of starting
  points (E over [0, min L), alpha over 0.02..1, plus a log-log regression of L - E for each E) and the
  lowest cost wins, because the (E, alpha) valley is long and a single start can stop in the wrong place.
* **Too few points.** A free 3-parameter fit on n points leaves n - 3 residual degrees of freedom; with 4
  points that is one, the problem is ill-posed and E trades off freely against alpha. So ``auto`` mode
  fits E per series only when every series has at least 5 points. Otherwise it fits one E *shared* by all
  series (one irreducible loss for one validation set, the usual assumption in scaling-law fits) with A
  and alpha per series; a lone short series gets E = 0, i.e. a pure power law whose alpha equals the
  log-log slope. Each fallback is reported as a warning.
* **Slope.** Beside alpha, the model-free log-log slope -d ln L / d ln C (least squares over the points) and
  the paper's semi-log slope (loss per decade of compute) are reported.
* **Bootstrap.** Parametric: each replicate adds Gaussian log-space noise to the fitted curve and refits.
  The noise scale is the residual standard error, drawn per replicate from its own sampling distribution
  (s^2 * dof / chi2(dof)), which widens the intervals honestly when there are few degrees of freedom (the
  bootstrap analogue of a t rather than a z interval); a stated per-point error (``loss_err``) is a floor.
  With 4 to 12 points, resampling points or residuals would leave a handful of distinct values, which is
  why the bootstrap is parametric. Intervals are percentile intervals; replicates of series fitted
  together share draws, so differences between them keep their correlation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowrank_lm.errors import UserError
from lowrank_lm.stats.bootstrap import note_failed_refits, quantile_interval, replicates
from lowrank_lm.stats.multistart import multistart

MIN_POINTS_EXPONENT = 3
"""Fewer points than this: no exponent (two points still give a slope)."""
MIN_POINTS_FREE = 5
"""A free (E, A, alpha) fit per series needs this many points (two residual degrees of freedom)."""
ALPHA_MAX = 5.0
COND_WARN = 1e4
"""Condition number of the column-normalised Jacobian above which the fit is called ill-conditioned."""
MODES = ("auto", "free", "shared", "power", "fixed")


@dataclass
class Series:
    """The points of one curve: compute (or parameters), loss, and each loss's stated error (0 if none)."""

    name: str
    x: np.ndarray
    loss: np.ndarray
    loss_err: np.ndarray
    sizes: list[str] | None = None
    """The model size of each point (the ``size`` column), when known: it pairs points across series."""

    @property
    def n(self) -> int:
        return len(self.x)

    @staticmethod
    def from_rows(rows: list[dict[str, Any]]) -> dict[str, Series]:
        """Group rows with ``series``, ``x``, ``loss`` (and ``loss_err``) into series sorted by x."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(r["series"], []).append(r)
        out = {}
        for name, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["x"])
            sizes = [str(r.get("size") or "") for r in rs]
            out[name] = Series(name, np.array([r["x"] for r in rs], float), np.array([r["loss"] for r in rs], float),
                               np.array([r.get("loss_err") or 0.0 for r in rs], float),
                               sizes if all(sizes) and len(set(sizes)) == len(sizes) else None)
        return out


@dataclass
class FitOptions:
    """How to fit: E handling, bootstrap size, interval level and the random seed (fits are deterministic)."""

    mode: str = "auto"
    """auto | free (E per series) | shared (one E for all series) | power (E = 0) | fixed (E = fixed_E)."""
    fixed_E: float | None = None
    n_bootstrap: int = 1000
    level: float = 0.95
    seed: int = 0


@dataclass
class SeriesFit:
    """The fit of one series. ``samples`` holds (E, ln A, alpha) per bootstrap replicate (NaN: failed)."""

    name: str
    n_points: int
    mode: str
    """free | shared | fixed | power (a fitted exponent) or slope-only / none (too few points)."""
    alpha: float | None = None
    alpha_ci: tuple[float, float] | None = None
    E: float | None = None
    E_ci: tuple[float, float] | None = None
    A: float | None = None
    slope: float | None = None
    """-d ln L / d ln C by least squares over the points (positive when the loss falls)."""
    slope_ci: tuple[float, float] | None = None
    loss_per_decade: float | None = None
    """-d L / d log10 C by least squares: the slope of the paper's semi-log plot."""
    loss_per_decade_ci: tuple[float, float] | None = None
    x_min: float = math.nan
    x_max: float = math.nan
    residual_se: float | None = None
    """Residual standard error of the fit in log space (about the relative error of one loss)."""
    dof: int | None = None
    warnings: list[str] = field(default_factory=list)
    samples: np.ndarray | None = field(default=None, repr=False)
    slope_samples: np.ndarray | None = field(default=None, repr=False)
    per_decade_samples: np.ndarray | None = field(default=None, repr=False)

    @property
    def fitted(self) -> bool:
        return self.alpha is not None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The fitted loss at compute ``x``."""
        assert self.alpha is not None and self.E is not None and self.A is not None
        return self.E + np.exp(math.log(self.A) - self.alpha * np.log(x))

    def sample_curves(self, x: np.ndarray) -> np.ndarray:
        """Loss at ``x`` for every successful bootstrap replicate: shape (replicates, len(x))."""
        if self.samples is None:
            return np.empty((0, len(x)))
        ok = self.samples[np.isfinite(self.samples).all(axis=1)]
        return ok[:, :1] + np.exp(ok[:, 1:2] - ok[:, 2:3] * np.log(x)[None, :])

    def to_json(self) -> dict[str, Any]:
        """The issue's contract keys first, then the extras (mode, E interval, slope interval, warnings)."""

        def num(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        def pair(v: tuple[float, float] | None) -> list[float | None] | None:
            return None if v is None else [num(v[0]), num(v[1])]

        return {"alpha": num(self.alpha), "alpha_ci": pair(self.alpha_ci), "E": num(self.E), "A": num(self.A),
                "slope": num(self.slope), "n_points": self.n_points, "mode": self.mode, "E_ci": pair(self.E_ci),
                "slope_ci": pair(self.slope_ci), "loss_per_decade": num(self.loss_per_decade),
                "loss_per_decade_ci": pair(self.loss_per_decade_ci),
                "x_range": [num(self.x_min), num(self.x_max)], "residual_se": num(self.residual_se),
                "dof": self.dof, "warnings": list(self.warnings)}


@dataclass
class FitResult:
    """All series fits, the comparisons between them (see :mod:`compare`) and global warnings."""

    series: dict[str, SeriesFit]
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"series": {k: v.to_json() for k, v in self.series.items()}, "comparisons": self.comparisons,
                "warnings": self.warnings, "settings": self.settings}


# --------------------------------------------------------------------------- descriptive slopes


def loglog_slope(x: np.ndarray, loss: np.ndarray) -> float:
    """-d ln L / d ln x by ordinary least squares."""
    return -float(np.polyfit(np.log(x), np.log(loss), 1)[0])


def loss_per_decade(x: np.ndarray, loss: np.ndarray) -> float:
    """-d L / d log10 x by ordinary least squares (the paper's figure has linear loss, log compute)."""
    return -float(np.polyfit(np.log10(x), loss, 1)[0])


def _ols_slopes(lnx: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Negative OLS slopes of each row of ``y`` (replicates x points) against ``lnx``."""
    xc = lnx - lnx.mean()
    return -((y - y.mean(axis=1, keepdims=True)) @ xc) / (xc @ xc)


# --------------------------------------------------------------------------- one least-squares problem


@dataclass
class StackedSeries:
    """Every point of several series in flat arrays: log compute normalised by its mean (``x``), log loss
    (``y``), the series index of each point and its relative (log-space) error. The shared base of the fits
    that put several series into one least-squares problem."""

    series: list[Series]
    lnx: np.ndarray = field(init=False)
    x: np.ndarray = field(init=False)
    y: np.ndarray = field(init=False)
    idx: np.ndarray = field(init=False)
    err: np.ndarray = field(init=False)
    c0: float = field(init=False)

    def __post_init__(self) -> None:
        self.lnx = np.concatenate([np.log(s.x) for s in self.series])
        self.c0 = float(self.lnx.mean())
        self.x = self.lnx - self.c0
        self.y = np.concatenate([np.log(s.loss) for s in self.series])
        self.idx = np.concatenate([np.full(s.n, k) for k, s in enumerate(self.series)])
        self.err = np.concatenate([s.loss_err / s.loss for s in self.series])  # relative = log-space error


@dataclass
class _Group(StackedSeries):
    """Series fitted together: one E (free or fixed) and (b, alpha) per series, in normalised compute."""

    E_fixed: float | None = None

    @property
    def k(self) -> int:
        return len(self.series)

    @property
    def free_E(self) -> bool:
        return self.E_fixed is None

    @property
    def n_params(self) -> int:
        return 2 * self.k + (1 if self.free_E else 0)

    def unpack(self, p: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        if self.free_E:
            return float(p[0]), p[1:1 + self.k], p[1 + self.k:]
        assert self.E_fixed is not None
        return self.E_fixed, p[:self.k], p[self.k:]

    def model(self, p: np.ndarray) -> np.ndarray:
        """ln(E + exp(b - alpha x)) for every point, computed without overflow."""
        E, b, a = self.unpack(p)
        z = b[self.idx] - a[self.idx] * self.x
        return np.logaddexp(math.log(E) if E > 0 else -np.inf, z)

    def jac(self, p: np.ndarray) -> np.ndarray:
        E, b, a = self.unpack(p)
        z = b[self.idx] - a[self.idx] * self.x
        m = np.logaddexp(math.log(E) if E > 0 else -np.inf, z)
        w = np.exp(z - m)  # share of the reducible term in the loss
        n = len(self.x)
        cols_b = np.zeros((n, self.k))
        cols_a = np.zeros((n, self.k))
        cols_b[np.arange(n), self.idx] = w
        cols_a[np.arange(n), self.idx] = -self.x * w
        parts = [cols_b, cols_a]
        if self.free_E:
            parts.insert(0, np.exp(-m)[:, None])
        return np.hstack(parts)

    def bounds(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = [-60.0] * self.k + [0.0] * self.k
        hi = [60.0] * self.k + [ALPHA_MAX] * self.k
        if self.free_E:
            lo.insert(0, 0.0)
            hi.insert(0, float(np.exp(y.min())))
        return np.array(lo), np.array(hi)

    def starts(self, y: np.ndarray) -> list[np.ndarray]:
        """Starting points: for each E on a grid, a log-log regression of L - E and a few fixed alphas."""
        loss = np.exp(y)
        lmin = float(loss.min())
        e_grid = [0.0, 0.25 * lmin, 0.5 * lmin, 0.75 * lmin, 0.9 * lmin, 0.97 * lmin] if self.free_E \
            else [float(self.E_fixed)]  # type: ignore[arg-type]
        out = []
        for e0 in e_grid:
            red = np.log(loss - e0)
            reg_b, reg_a = np.zeros(self.k), np.zeros(self.k)
            for k in range(self.k):
                sel = self.idx == k
                slope, icpt = np.polyfit(self.x[sel], red[sel], 1)
                reg_a[k], reg_b[k] = np.clip(-slope, 1e-3, ALPHA_MAX - 1e-3), icpt
            candidates = [(reg_b, reg_a)]
            for a0 in (0.02, 0.1, 0.3, 1.0):
                a = np.full(self.k, a0)
                b = np.array([np.mean(red[self.idx == k] + a0 * self.x[self.idx == k]) for k in range(self.k)])
                candidates.append((b, a))
            for b, a in candidates:
                out.append(np.concatenate(([np.array([e0])] if self.free_E else []) + [b, a]))
        return out

    def solve(self, y: np.ndarray, starts: list[np.ndarray]) -> Any:
        """Bounded least squares from each start; the lowest cost wins (None if every start failed)."""
        return multistart(lambda p: self.model(p) - y, self.jac, starts, self.bounds(y), max_nfev=500,
                          ftol=1e-12, xtol=1e-12, gtol=1e-12)


def _fit_group(group: _Group, mode: str, opts: FitOptions,
               rng: np.random.Generator) -> tuple[list[SeriesFit], list[str]]:
    """Fit one group and bootstrap it: one :class:`SeriesFit` per series, and the group's own warnings."""
    p_hat, s, dof, notes = _point_fit(group)
    boot = _bootstrap_group(group, p_hat, s, dof, opts.n_bootstrap, rng)
    if boot is not None:
        note_failed_refits(boot.samples, notes)
    if dof <= 0 and not np.any(group.err > 0):
        notes.append("no residual degrees of freedom and no stated errors: no intervals")
    out = [_series_fit(group, k, mode, p_hat, s, dof, boot, opts.level, notes) for k in range(group.k)]
    return out, (notes if group.k > 1 else [])


def _point_fit(group: _Group) -> tuple[np.ndarray, float, int, list[str]]:
    """The least-squares fit of a group: (parameters, residual SE, degrees of freedom, warnings)."""
    best = group.solve(group.y, group.starts(group.y))
    names = ", ".join(s.name for s in group.series)
    if best is None:
        raise UserError(f"the power-law fit failed for {names} from every starting point; check the data "
                        "(a loss that rises with compute cannot be fitted)")
    p_hat = best.x
    lmin = float(np.exp(group.y.min()))
    if group.free_E and p_hat[0] <= 1e-9 * lmin:
        p_hat[0] = 0.0  # at the bound: report 0, not the solver's 1e-16
    e_hat, _, a = group.unpack(p_hat)
    dof = len(group.y) - group.n_params
    rss = float(np.sum((group.model(p_hat) - group.y) ** 2))
    s = math.sqrt(rss / dof) if dof > 0 else 0.0
    notes: list[str] = []
    if group.free_E and e_hat <= 1e-6 * lmin:
        notes.append("E = 0, its lower bound: the points show no flattening, so the irreducible loss is not "
                     "identified and alpha is the exponent of a pure power law")
    if group.free_E and e_hat >= lmin * (1 - 1e-4):
        notes.append("E reached the smallest observed loss: the curve flattens inside the data; E and alpha "
                     "are not identified separately")
    if np.any(a >= ALPHA_MAX * (1 - 1e-6)):
        notes.append(f"alpha hit its upper bound {ALPHA_MAX}: the fit is degenerate")
    # Conditioning, on the parameters not pinned at a bound (a pinned E is reported above already).
    jac = group.jac(p_hat)[:, best.active_mask == 0]
    if jac.shape[1]:
        norms = np.linalg.norm(jac, axis=0)
        norms[norms == 0] = 1.0
        sv = np.linalg.svd(jac / norms, compute_uv=False)
        cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf
        if cond > COND_WARN:
            notes.append(f"ill-conditioned fit (condition number {cond:.2g}): E, A and alpha trade off "
                         "against each other; trust the intervals, not the point values")
    return p_hat, s, dof, notes


@dataclass
class _GroupBootstrap:
    """The replicates of one group: refitted parameters, and each series' slope and loss per decade."""

    samples: np.ndarray
    slopes: np.ndarray
    per_decade: np.ndarray


def _bootstrap_group(group: _Group, p_hat: np.ndarray, s: float, dof: int, B: int,
                     rng: np.random.Generator) -> _GroupBootstrap | None:
    """Parametric, log-space Gaussian noise around the fitted curve (see the module docstring); None when
    there are no replicates or no noise to draw them with."""
    if B == 0 or not (s > 0 or bool(np.any(group.err > 0))):
        return None
    fitted = group.model(p_hat)
    lmin = float(np.exp(group.y.min()))
    boot = _GroupBootstrap(np.full((B, group.n_params), np.nan), np.full((B, group.k), np.nan),
                           np.full((B, group.k), np.nan))
    log10x = group.lnx / math.log(10)
    for i in range(B):
        # one replicate per call, its scale drawn just before its noise: the order every recorded fit used
        y_b = replicates(rng, fitted, 1, s, dof, group.err)[0]
        res = group.solve(y_b, [p_hat])
        if res is not None:
            boot.samples[i] = res.x
            if group.free_E and boot.samples[i, 0] <= 1e-9 * lmin:
                boot.samples[i, 0] = 0.0
        for k in range(group.k):
            sel = group.idx == k
            boot.slopes[i, k] = _ols_slopes(group.lnx[sel], y_b[None, sel])[0]
            boot.per_decade[i, k] = _ols_slopes(log10x[sel], np.exp(y_b[None, sel]))[0]
    return boot


def _series_fit(group: _Group, k: int, mode: str, p_hat: np.ndarray, s: float, dof: int,
                boot: _GroupBootstrap | None, level: float, notes: list[str]) -> SeriesFit:
    """The fit of the group's ``k``-th series, with its intervals from the group's replicates."""
    ser = group.series[k]
    e_hat, b, a = group.unpack(p_hat)
    sel = group.idx == k
    lnA = b[k] + a[k] * group.c0
    fit = SeriesFit(name=ser.name, n_points=ser.n, mode=mode, alpha=float(a[k]), E=float(e_hat),
                    A=float(math.exp(lnA)), slope=loglog_slope(ser.x, ser.loss),
                    loss_per_decade=loss_per_decade(ser.x, ser.loss), x_min=float(ser.x.min()),
                    x_max=float(ser.x.max()), residual_se=s, dof=dof,
                    warnings=list(notes) if group.k == 1 else [])
    if boot is not None:
        samples, B = boot.samples, len(boot.samples)
        e_s = samples[:, 0] if group.free_E else np.full(B, e_hat)
        b_s, a_s = (samples[:, 1 + k], samples[:, 1 + group.k + k]) if group.free_E \
            else (samples[:, k], samples[:, group.k + k])
        fit.samples = np.column_stack([e_s, b_s + a_s * group.c0, a_s])
        fit.alpha_ci = quantile_interval(a_s, level)
        fit.E_ci = quantile_interval(e_s, level) if group.free_E else None
        # The replicate slopes scatter around the slope of the fitted curve; their deviations from it,
        # added to the observed slope, give the slope's interval.
        fitted = group.model(p_hat)
        curve_slope = _ols_slopes(group.lnx[sel], fitted[None, sel])[0]
        fit.slope_samples = fit.slope + (boot.slopes[:, k] - curve_slope)
        fit.slope_ci = quantile_interval(fit.slope_samples, level)
        log10x = group.lnx / math.log(10)
        curve_per_decade = _ols_slopes(log10x[sel], np.exp(fitted[None, sel]))[0]
        fit.per_decade_samples = fit.loss_per_decade + (boot.per_decade[:, k] - curve_per_decade)
        fit.loss_per_decade_ci = quantile_interval(fit.per_decade_samples, level)
    if fit.alpha_ci is not None and fit.alpha_ci[1] - fit.alpha_ci[0] > float(a[k]):
        fit.warnings.append("alpha is poorly determined: its interval is wider than its value")
    decades = math.log10(ser.x.max() / ser.x.min())
    if decades < 1:
        fit.warnings.append(f"the points span only {decades:.2f} decades of compute; exponents from a short "
                            "range extrapolate poorly")
    return fit


# --------------------------------------------------------------------------- the whole table


def _short_fit(ser: Series) -> SeriesFit:
    """A series too short for an exponent: the slope of two points, or nothing."""
    fit = SeriesFit(name=ser.name, n_points=ser.n, mode="slope-only" if ser.n == 2 else "none",
                    x_min=float(ser.x.min()), x_max=float(ser.x.max()))
    if ser.n == 2 and ser.x[0] != ser.x[1]:
        fit.slope = loglog_slope(ser.x, ser.loss)
        fit.loss_per_decade = loss_per_decade(ser.x, ser.loss)
        fit.warnings.append("2 points: a slope only, no exponent and no interval")
    else:
        fit.mode = "none"
        fit.warnings.append(f"{ser.n} point(s): nothing to fit")
    return fit


def fit_all(series: dict[str, Series], opts: FitOptions | None = None) -> FitResult:
    """Fit every series as ``opts.mode`` says (``auto``: see the module docstring) and bootstrap the fits."""
    opts = opts or FitOptions()
    if opts.mode not in MODES:
        raise UserError(f"unknown fit mode {opts.mode!r}; use one of {', '.join(MODES)}")
    if not 0 < opts.level < 1:
        raise UserError(f"the interval level must be between 0 and 1, got {opts.level}")
    if opts.n_bootstrap < 0:
        raise UserError("the number of bootstrap replicates cannot be negative")
    mode = "fixed" if opts.fixed_E is not None and opts.mode in ("auto", "fixed") else opts.mode
    if mode == "fixed" and opts.fixed_E is None:
        raise UserError("mode fixed needs a value for E (--E)")
    warnings: list[str] = []
    fits: dict[str, SeriesFit] = {}
    eligible = {}
    for name, ser in series.items():
        if ser.n < MIN_POINTS_EXPONENT or len(np.unique(ser.x)) < 2:
            fits[name] = _short_fit(ser)
        else:
            eligible[name] = ser
    if mode == "fixed":
        low = min((float(s.loss.min()) for s in eligible.values()), default=math.inf)
        if not 0 <= opts.fixed_E < low:  # type: ignore[operator]
            raise UserError(f"E={opts.fixed_E} must be at least 0 and below the smallest loss ({low:.4g})")
    short = sorted(n for n, s in eligible.items() if s.n < MIN_POINTS_FREE)
    if mode == "auto":
        if not short:
            mode = "free"
        elif len(eligible) >= 2:
            mode = "shared"
            warnings.append(f"fewer than {MIN_POINTS_FREE} points in {', '.join(short)}: a free 3-parameter fit "
                            "(E, A, alpha) per series would be ill-posed, so one E is shared by all series "
                            "(assumes one irreducible loss for one validation set); pass --mode power or --E "
                            "to choose otherwise")
        else:
            mode = "power"
            warnings.append(f"only {', '.join(short)} can be fitted and it has fewer than {MIN_POINTS_FREE} "
                            "points: E is fixed at 0 (a pure power law; alpha equals the log-log slope)")

    groups: list[tuple[_Group, str]] = []
    if mode == "free":
        for name, ser in eligible.items():
            if ser.n <= 3:
                warnings.append(f"{name}: {ser.n} points leave no degrees of freedom for (E, A, alpha); "
                                "fitted as a pure power law (E = 0) instead")
                groups.append((_Group([ser], 0.0), "power"))
                continue
            if ser.n < MIN_POINTS_FREE:
                warnings.append(f"{name}: a 3-parameter fit on {ser.n} points is ill-posed (one residual degree "
                                "of freedom); its E and alpha are not reliable")
            groups.append((_Group([ser], None), "free"))
    elif mode == "shared" and eligible:
        groups.append((_Group(list(eligible.values()), None), "shared"))
    else:
        e_value = 0.0 if mode == "power" else float(opts.fixed_E)  # type: ignore[arg-type]
        for ser in eligible.values():
            groups.append((_Group([ser], e_value), mode))

    for gi, (group, gmode) in enumerate(groups):
        rng = np.random.default_rng([opts.seed, gi])  # one stream per group: reproducible, order-independent
        group_fits, group_notes = _fit_group(group, gmode, opts, rng)
        for f in group_fits:
            fits[f.name] = f
        warnings += [f"shared fit: {n}" for n in group_notes]
    ordered = {name: fits[name] for name in series}
    settings = {"mode": mode, "requested_mode": opts.mode, "fixed_E": opts.fixed_E, "n_bootstrap": opts.n_bootstrap,
                "level": opts.level, "seed": opts.seed}
    return FitResult(series=ordered, warnings=warnings, settings=settings)
