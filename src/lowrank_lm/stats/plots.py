"""The scaling figures: validation loss against training compute (log x, as in the paper), the fitted curve
with its bootstrap band, and optionally the paper's points; the joint law's surfaces (loss vs N at fixed D, vs
D at fixed N); IsoFLOP parabolas and the N*(C) lines; the shared-exponent fit collapsed onto its baseline.

Every figure is drawn in the project's one style (:mod:`lowrank_lm.plotting`): a colour family per series,
shades per budget or slice (one budget has one shade in every family), titles, legends only when labelled,
compact log ticks. Each ``*_figure`` returns the matplotlib Figure (tests read its contents); each ``plot_*``
writes it to a PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lowrank_lm.layers import registry
from lowrank_lm.plotting import compact_number, finish, paired_colours, save, series_colours, series_styles, styled
from lowrank_lm.stats.fit import FitResult, Series

X_LABELS = {"flops": "training FLOPs (paper convention: 3 x forward)", "flops_6n": "training FLOPs (6N)",
            "params": "parameters", "params_non_embedding": "non-embedding parameters", "tokens": "tokens"}


def plot_fit(result: FitResult, series: dict[str, Series], path: str | Path, x_column: str = "flops",
             overlay: dict[str, Series] | None = None, title: str | None = None) -> Path:
    """Draw :func:`fit_figure` to ``path`` (PNG)."""
    return save(fit_figure(result, series, x_column, overlay, title), path)


@styled
def fit_figure(result: FitResult, series: dict[str, Series], x_column: str = "flops",
               overlay: dict[str, Series] | None = None, title: str | None = None) -> Any:
    """The points and fits of ``result``, each fit with its bootstrap band (and the ``overlay`` points, hollow,
    in their series' colour). The title names the bands only when some series has one."""
    import matplotlib.pyplot as plt

    level = float(result.settings.get("level", 0.95))
    names = list(series)
    styles = series_styles(names + [n for n in (overlay or {}) if n not in series], registry.colormaps())
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    bands = 0
    for name, ser in series.items():
        fit = result.series.get(name)
        c, ls, m = styles[name]["color"], styles[name]["linestyle"], styles[name]["marker"]
        if fit is not None and fit.fitted:
            lo, hi = math.log10(ser.x.min()), math.log10(ser.x.max())
            pad = 0.1 * max(hi - lo, 0.5)
            grid = np.logspace(lo - pad, hi + pad, 200)
            label = f"{name}: alpha {fit.alpha:.3g}"
            if fit.alpha_ci is not None:
                label += f" [{fit.alpha_ci[0]:.3g}, {fit.alpha_ci[1]:.3g}]"
            ax.plot(grid, fit.predict(grid), color=c, ls=ls, lw=1.6, label=label)
            curves = fit.sample_curves(grid)
            if len(curves) >= 10:
                q = (1 - level) / 2
                band = np.quantile(curves, [q, 1 - q], axis=0)
                ax.fill_between(grid, band[0], band[1], color=c, alpha=0.18, lw=0)
                bands += 1
            ax.plot(ser.x, ser.loss, m, color=c, ms=5)
        else:
            ax.plot(ser.x, ser.loss, m, color=c, ls=ls, ms=5, lw=0.8, label=f"{name} (points only, {ser.n})")
    for name, ser in (overlay or {}).items():
        c = styles[name]["color"]
        ax.plot(ser.x, ser.loss, styles[name]["marker"], mfc="none", mec=c, ms=7, mew=1.2, ls=":", lw=0.8,
                color=c, label=f"paper: {name}")
    ax.set_xscale("log")
    mode = result.settings.get("mode")
    bands_note = f", {level:.0%} bootstrap bands" if bands else ", no fit to draw a band for"
    finish(ax, title or f"loss vs {x_column}: L = E + A x^-alpha ({mode} E){bands_note}",
           X_LABELS.get(x_column, x_column), "validation loss (nats / token)", legend_loc="upper right")
    fig.tight_layout()
    return fig


def _levels(values: np.ndarray, most: int = 6) -> np.ndarray:
    """The distinct values when there are few, else 4 geometric quantiles: the slices to draw."""
    distinct = np.unique(values)
    if len(distinct) <= most:
        return distinct
    return np.exp(np.quantile(np.log(values), np.linspace(0.05, 0.95, 4)))


def plot_joint(result: Any, series: dict[str, Any], path: str | Path) -> Path:
    """Draw :func:`joint_figure` to ``path`` (PNG)."""
    return save(joint_figure(result, series), path)


@styled
def joint_figure(result: Any, series: dict[str, Any]) -> Any:
    """Per series, loss vs N at fixed D and loss vs D at fixed N: the runs and the fitted surface's slices,
    the series' colour family with one shade per slice (darker: larger).

    With few distinct values of the fixed variable every run lies on a slice. Otherwise (an IsoFLOP design
    gives every run its own D) each run is drawn on the slice nearest to it in log scale, moved along the
    fitted surface with its residual kept (a partial-residual plot), and the title says so.
    """
    import matplotlib.pyplot as plt

    names = [n for n in result.series if n in series]
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 4.2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        fit, ser = result.series[name], series[name]
        for ax, levels, along, across, label in ((axes[row, 0], _levels(ser.D), ser.N, ser.D, "D"),
                                                  (axes[row, 1], _levels(ser.N), ser.D, ser.N, "N")):
            colours = paired_colours([(name, float(v)) for v in levels], registry.colormaps())
            nearest = np.argmin(np.abs(np.log(across)[:, None] - np.log(levels)[None, :]), axis=1)
            moved = not np.allclose(across, levels[nearest], rtol=1e-9)
            residual = ser.loss - fit.predict(ser.N, ser.D)
            grid = np.geomspace(along.min() / 1.5, along.max() * 1.5, 200)
            for k, (level, c) in enumerate(zip(levels, colours)):
                curve = fit.predict(grid, level) if label == "D" else fit.predict(level, grid)
                ax.plot(grid, curve, color=c, lw=1.4, label=f"{label} = {compact_number(level)}")
                sel = nearest == k
                on_slice = fit.predict(along[sel], level) if label == "D" else fit.predict(level, along[sel])
                ax.plot(along[sel], on_slice + residual[sel], "o", color=c, ms=4)
            ax.set_xscale("log")
            note = f"\nruns moved to the nearest {label} slice along the fit, residuals kept" if moved else ""
            finish(ax, f"{name}: loss vs {'N at fixed D' if label == 'D' else 'D at fixed N'} "
                       f"(alpha {fit.alpha:.3g}, beta {fit.beta:.3g}){note}",
                   "parameters N" if label == "D" else "tokens D", "validation loss (nats / token)")
    fig.tight_layout()
    return fig


def plot_isoflop(iso: dict[str, Any], path: str | Path) -> Path:
    """Draw :func:`isoflop_figure` to ``path`` (PNG)."""
    return save(isoflop_figure(iso), path)


@styled
def isoflop_figure(iso: dict[str, Any]) -> Any:
    """Left: each budget's runs, its parabola and vertex (with interval), a colour family per series and one
    shade per budget (the series of one budget paired); right: N*(C) per series from the IsoFLOP vertices
    (points, solid line) and from the joint law (dashed)."""
    import matplotlib.pyplot as plt

    markers = "osD^vP*X"
    profiles = [(name, p) for name, s in iso.items() for p in s.profiles]
    shades = dict(zip([(name, id(p)) for name, p in profiles],
                      paired_colours([(name, float(p.C)) for name, p in profiles], registry.colormaps())))
    dark = series_colours(list(iso), registry.colormaps())
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for k, (name, s) in enumerate(iso.items()):
        m = markers[k % len(markers)]
        for p in s.profiles:
            c = shades[(name, id(p))]
            grid = np.geomspace(p.N.min() / 1.3, p.N.max() * 1.3, 200)
            left.plot(p.N, p.loss, m, color=c, ms=5)
            left.plot(grid, p.parabola(grid), color=c, lw=1.2, label=f"{name} {p.label}")
            if p.N_opt is not None and p.L_opt is not None:
                xerr = None if p.N_opt_ci is None else [[p.N_opt - p.N_opt_ci[0]], [p.N_opt_ci[1] - p.N_opt]]
                left.errorbar([p.N_opt], [p.L_opt], xerr=xerr, fmt=m, color=c, mfc="white", ms=8, capsize=3)
    for k, (name, s) in enumerate(iso.items()):
        c = dark[name]
        m = markers[k % len(markers)]
        pts = [p for p in s.profiles if p.N_opt is not None]
        if pts:
            C = np.array([p.C for p in pts])
            N = np.array([p.N_opt for p in pts])
            err = np.array([[n - p.N_opt_ci[0], p.N_opt_ci[1] - n] if p.N_opt_ci else [0.0, 0.0]
                            for n, p in zip(N, pts)]).T
            right.errorbar(C, N, yerr=err, fmt=m, color=c, ms=6, capsize=3)
            grid = np.geomspace(C.min() / 2, C.max() * 2, 50)
            law = s.laws.get("N_isoflop")
            if law is not None:
                right.plot(grid, law.at(grid), color=c, lw=1.4, label=f"{name}: IsoFLOP, a = {law.exponent:.3g}")
            joint = s.laws.get("N_joint")
            if joint is not None:
                right.plot(grid, joint.at(grid), color=c, lw=1.4, ls="--",
                           label=f"{name}: joint law, a = {joint.exponent:.3g}")
    # one decade around the sizes tried: a vertex interval that runs further (a flat or monotone profile) is cut
    # at the frame instead of squeezing the data into a corner
    sizes = np.concatenate([p.N for _, p in profiles])
    view = (sizes.min() / 10, sizes.max() * 10)
    left.set_xlim(*view)
    right.set_ylim(*view)
    left.set_xscale("log")
    finish(left, "IsoFLOP profiles: parabolas in ln N, vertices with intervals (hollow; cut at the frame)",
           "parameters N", "validation loss (nats / token)")
    right.set_xscale("log")
    right.set_yscale("log")
    finish(right, "N*(C) per structure: IsoFLOP vertices (solid fit) and joint law (dashed)",
           "training FLOPs C", "compute-optimal parameters N*")
    fig.tight_layout()
    return fig


def plot_shared(fit: Any, series: dict[str, Series], path: str | Path, x_column: str = "flops") -> Path:
    """Draw :func:`shared_figure` to ``path`` (PNG)."""
    return save(shared_figure(fit, series, x_column), path)


@styled
def shared_figure(fit: Any, series: dict[str, Series], x_column: str = "flops") -> Any:
    """Left: each series' points and its fitted curve E + A (k C)^-alpha. Right: every point moved to k C, onto
    the baseline's curve, drawn with its bootstrap band: series that share the curve fall on one line."""
    import matplotlib.pyplot as plt

    level = float(fit.settings.get("level", 0.95))
    colours = series_colours(fit.names, registry.colormaps())
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    lo = min(fit.x_range[n][0] * min(1.0, fit.multiplier(n)) for n in fit.names)
    hi = max(fit.x_range[n][1] * max(1.0, fit.multiplier(n)) for n in fit.names)
    grid = np.geomspace(lo / 1.5, hi * 1.5, 200)
    for name in fit.names:
        ser, c, k = series[name], colours[name], fit.multiplier(name)
        own = np.geomspace(ser.x.min() / 1.5, ser.x.max() * 1.5, 100)
        label = name if name == fit.baseline else f"{name}: k = {k:.3g}"
        ci = fit.k_ci.get(name)
        if ci is not None:
            label += f" [{ci[0]:.3g}, {ci[1]:.3g}]"
        left.plot(own, fit.predict(name, own), color=c, lw=1.4)
        left.plot(ser.x, ser.loss, "o", color=c, ms=5, label=label)
        right.plot(k * ser.x, ser.loss, "o", color=c, ms=5, label=label)
    right.plot(grid, fit.predict(fit.baseline, grid), color="black", lw=1.4,
               label=f"{fit.baseline} curve, alpha = {fit.alpha:.3g}")
    curves = fit.sample_losses(fit.baseline, grid)
    if len(curves) >= 10:
        q = (1 - level) / 2
        band = np.quantile(curves, [q, 1 - q], axis=0)
        right.fill_between(grid, band[0], band[1], color="black", alpha=0.15, lw=0,
                           label=f"{level:.0%} bootstrap band")
    left.set_xscale("log")
    right.set_xscale("log")
    finish(left, "points and fitted curves", X_LABELS.get(x_column, x_column), "validation loss (nats / token)")
    finish(right, f"collapsed onto {fit.baseline} by each series' compute multiplier k",
           f"{fit.baseline}-equivalent compute k x C")
    fig.suptitle("shared-exponent fit: L = E + A (k C)^-alpha", fontsize=10)
    fig.tight_layout()
    return fig
