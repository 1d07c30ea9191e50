"""The scaling figure: validation loss against training compute (log x, linear y, as in the paper),
one colour per series, the fitted curve with its bootstrap band, and optionally the paper's points."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lowrank_lm.scaling.fit import FitResult, Series

X_LABELS = {"flops": "training FLOPs (paper convention: 3 x forward)", "flops_6n": "training FLOPs (6N)",
            "params": "parameters", "params_non_embedding": "non-embedding parameters", "tokens": "tokens"}


def _colours(names: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def plot_fit(result: FitResult, series: dict[str, Series], path: str | Path, x_column: str = "flops",
             overlay: dict[str, Series] | None = None, title: str | None = None) -> Path:
    """Draw the points and fits of ``result`` (and the ``overlay`` points, hollow) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, on servers and in tests
    import matplotlib.pyplot as plt

    level = float(result.settings.get("level", 0.95))
    names = list(series)
    extra = [n for n in (overlay or {}) if n not in series]
    colours = _colours(names + extra)
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=150)
    for name, ser in series.items():
        fit = result.series.get(name)
        c = colours[name]
        if fit is not None and fit.fitted:
            lo, hi = math.log10(ser.x.min()), math.log10(ser.x.max())
            pad = 0.1 * max(hi - lo, 0.5)
            grid = np.logspace(lo - pad, hi + pad, 200)
            label = f"{name}: alpha {fit.alpha:.3g}"
            if fit.alpha_ci is not None:
                label += f" [{fit.alpha_ci[0]:.3g}, {fit.alpha_ci[1]:.3g}]"
            ax.plot(grid, fit.predict(grid), color=c, lw=1.6, label=label)
            curves = fit.sample_curves(grid)
            if len(curves) >= 10:
                q = (1 - level) / 2
                band = np.quantile(curves, [q, 1 - q], axis=0)
                ax.fill_between(grid, band[0], band[1], color=c, alpha=0.18, lw=0)
            ax.plot(ser.x, ser.loss, "o", color=c, ms=5)
        else:
            ax.plot(ser.x, ser.loss, "s--", color=c, ms=5, lw=0.8, label=f"{name} (points only, {ser.n})")
    for name, ser in (overlay or {}).items():
        ax.plot(ser.x, ser.loss, "o", mfc="none", mec=colours[name], ms=7, mew=1.2, ls=":", lw=0.8,
                color=colours[name], label=f"paper: {name}")
    ax.set_xscale("log")
    ax.set_xlabel(X_LABELS.get(x_column, x_column))
    ax.set_ylabel("validation loss (nats / token)")
    ax.grid(True, which="both", alpha=0.3)
    mode = result.settings.get("mode")
    ax.set_title(title or f"loss vs {x_column}: L = E + A x^-alpha ({mode} E), {level:.0%} bootstrap bands",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
