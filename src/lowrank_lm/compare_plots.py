"""The loss figures of ``compare``, in the project's one style (:mod:`lowrank_lm.plotting`): a colour family
per structure with one shade per shape and budget (dense and lowrank of one budget paired), the mean over a
group's seeds with a band (mean +- one seed-to-seed standard deviation), training loss EMA-smoothed with the
raw mean faint, and the validation points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lowrank_lm import plotting
from lowrank_lm.layers import registry
from lowrank_lm.plotting import ema, finish, paired_colours, short_labels, spans_decades, styled
from lowrank_lm.run_groups import Group


def _on_grid(curves: list[list[tuple[int, float]]], grid: np.ndarray) -> np.ndarray:
    """Every seed's curve interpolated onto ``grid``: shape (seeds, len(grid))."""
    return np.array([np.interp(grid, [t for t, _ in c], [v for _, v in c]) for c in curves])


@styled
def draw_groups(groups: list[Group], x: str = "tokens", plt: Any = None, unigram: float | None = None) -> Any:
    """The figure: per group, the mean training loss over seeds (smoothed; raw faint), its seed band and the
    mean validation points, against tokens or training FLOPs (log axis when it spans a decade or more); the
    unigram baseline's loss as a line when given."""
    import matplotlib.pyplot as pyplot

    fig, ax = (plt or pyplot).subplots(figsize=(7.5, 4.8))
    colours = paired_colours([(g.structure, g.shape) for g in groups], registry.colormaps())
    names = short_labels([g.label for g in groups])
    span = []
    for g, colour, name in zip(groups, colours, names):
        scale = g.runs[0].flops_per_token if x == "flops" else 1.0
        curves = [r.curves() for r in g.runs]
        train = [c[0] for c in curves if c[0]]
        val = [c[1] for c in curves if c[1]]
        label = f"{name} ({len(g.runs)} seed{'s' if len(g.runs) > 1 else ''}, val {g.mean:.3f})"
        if train:
            grid = np.array([t for t, _ in train[0]], float)
            ys = _on_grid(train, grid)
            smooth = plotting.training_curve(ax, grid * scale, ys.mean(axis=0), colour, label)
            if len(ys) > 1:
                sd = ema(ys.std(axis=0, ddof=1))
                ax.fill_between(grid * scale, smooth - sd, smooth + sd, color=colour, alpha=0.2, lw=0)
            span += [grid[0] * scale, grid[-1] * scale]
        if val:
            vgrid = np.array([t for t, _ in val[0]], float)
            vmean = _on_grid(val, vgrid).mean(axis=0)
            ax.plot(vgrid * scale, vmean, "o", color=colour, ms=4, mec="black", mew=0.5,
                    label=None if train else label)
    plotting.unigram_line(ax, unigram)
    if spans_decades(span):
        ax.set_xscale("log")
    finish(ax, "training loss (EMA; raw faint; band: +-1 sd over seeds), validation loss (dots)",
           "training FLOPs (paper convention)" if x == "flops" else "tokens", "loss (nats / token)")
    fig.tight_layout()
    return fig


def plot_groups(groups: list[Group], path: Path, x: str = "tokens", unigram: float | None = None) -> Path | None:
    """Draw :func:`draw_groups` (with the unigram baseline's loss when given) to ``path``; None without
    matplotlib."""
    if plotting.pyplot() is None:
        return None
    return plotting.save(draw_groups(groups, x, unigram=unigram), path)
