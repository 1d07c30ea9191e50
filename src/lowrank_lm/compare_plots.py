"""The loss figures of ``compare``: one colour per configuration group, the mean over its seeds with a band
(mean +- one seed-to-seed standard deviation), training loss EMA-smoothed with the raw mean faint, and the
validation points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lowrank_lm import plotting
from lowrank_lm.atomic import atomic_open
from lowrank_lm.run_groups import Group

EMA_SPAN = 20
"""The smoothing averages over about 1/EMA_SPAN of a curve's logged points (none for 20 points or fewer)."""


def ema(y: np.ndarray, weight: float | None = None) -> np.ndarray:
    """Exponential moving average with bias correction (the first points are not pulled towards 0). The
    default weight scales with the curve's length, so a short curve is not dragged behind its own points."""
    if weight is None:
        weight = max(0.0, 1.0 - EMA_SPAN / max(len(y), 1))
    out = np.empty(len(y))
    acc, norm = 0.0, 0.0
    for i, v in enumerate(y):
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = acc / norm
    return out


def _on_grid(curves: list[list[tuple[int, float]]], grid: np.ndarray) -> np.ndarray:
    """Every seed's curve interpolated onto ``grid``: shape (seeds, len(grid))."""
    return np.array([np.interp(grid, [t for t, _ in c], [v for _, v in c]) for c in curves])


def draw_groups(groups: list[Group], x: str = "tokens", plt: Any = None) -> Any:
    """The figure: per group, the mean training loss over seeds (smoothed; raw faint), its seed band and the
    mean validation points, against tokens or training FLOPs (log axis when it spans a decade or more)."""
    from lowrank_lm.stats.plots import distinct_colours

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130)
    span = []
    for g, colour in zip(groups, distinct_colours(len(groups))):
        scale = g.runs[0].flops_per_token if x == "flops" else 1.0
        curves = [r.curves() for r in g.runs]
        train = [c[0] for c in curves if c[0]]
        val = [c[1] for c in curves if c[1]]
        label = f"{g.label} ({len(g.runs)} seed{'s' if len(g.runs) > 1 else ''}, val {g.mean:.3f})"
        if train:
            grid = np.array([t for t, _ in train[0]], float)
            ys = _on_grid(train, grid)
            mean = ys.mean(axis=0)
            ax.plot(grid * scale, mean, color=colour, lw=0.6, alpha=0.3)
            ax.plot(grid * scale, ema(mean), color=colour, lw=1.5, label=label)
            if len(ys) > 1:
                sd = ema(ys.std(axis=0, ddof=1))
                ax.fill_between(grid * scale, ema(mean) - sd, ema(mean) + sd, color=colour, alpha=0.2, lw=0)
            span += [grid[0] * scale, grid[-1] * scale]
        if val:
            vgrid = np.array([t for t, _ in val[0]], float)
            vmean = _on_grid(val, vgrid).mean(axis=0)
            ax.plot(vgrid * scale, vmean, "o", color=colour, ms=4, mec="black", mew=0.5,
                    label=None if train else label)
    if span and max(span) / max(min(span), 1) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (paper convention)" if x == "flops" else "tokens")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("training loss (EMA; raw faint; band: +-1 sd over seeds), validation loss (dots)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.ticklabel_format(axis="y", useOffset=False)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_groups(groups: list[Group], path: Path, x: str = "tokens") -> Path | None:
    """Draw :func:`draw_groups` to ``path``; None without matplotlib."""
    plt = plotting.pyplot()
    if plt is None:
        return None
    fig = draw_groups(groups, x, plt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:  # a temporary file of its own, renamed: a link at path is replaced
        fig.savefig(f, format="png")
    plt.close(fig)
    return path
