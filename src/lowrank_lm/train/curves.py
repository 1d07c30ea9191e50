"""Loss curves of finished runs: one run's training and validation loss read back from metrics.jsonl, drawn.

The trainer draws RUN/loss.png with it at the end of a run, and ``lowrank-lm compare`` draws several runs on
one figure; it lives with the trainer so that the trainer imports nothing above it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_lm import plotting
from lowrank_lm.layers import registry
from lowrank_lm.train.rundir import METRICS, SUMMARY
from lowrank_lm.train.summary import RunSummary


@dataclass
class Run:
    """One finished run: its label, folder and summary."""

    label: str
    path: Path
    summary: RunSummary

    def curves(self) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """(tokens, training loss) and (tokens, validation loss) points from metrics.jsonl (empty without it)."""
        path = self.path / METRICS
        if not path.is_file():
            return [], []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        train = [(r["tokens"], r["loss"]) for r in records if "loss" in r and "tokens" in r and not r.get("skipped")]
        val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r and "tokens" in r]
        return train, val

    @property
    def flops_per_token(self) -> float:
        return self.summary.train_flops / max(self.summary.tokens, 1)


def plot_losses(runs: list[Run], path: Path, x: str = "tokens", title: str | None = None) -> Path | None:
    """Draw :func:`loss_figure` to ``path``; None without matplotlib."""
    if plotting.pyplot() is None:
        return None
    return plotting.save(loss_figure(runs, x, title), path)


@plotting.styled
def loss_figure(runs: list[Run], x: str = "tokens", title: str | None = None, unigram: float | None = None) -> Any:
    """Loss against ``x`` (tokens or flops) for every run in the project's style: a colour family per
    structure, training loss EMA-smoothed over the raw curve (faint), validation loss as dots, a log axis when
    the run spans a decade or more; the unigram baseline's loss as a line when given."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plotting.paired_colours([(r.summary.structure or r.label, None) for r in runs], registry.colormaps())
    span: list[float] = []
    for run, colour, name in zip(runs, colours, plotting.short_labels([r.label for r in runs])):
        scale = run.flops_per_token if x == "flops" else 1.0
        train, val = run.curves()
        label = f"{name} (val {run.summary.final_val_loss:.3f})" if val else name
        if train:
            plotting.training_curve(ax, [t * scale for t, _ in train], [v for _, v in train], colour, label)
            span += [train[0][0] * scale, train[-1][0] * scale]
        if val:
            ax.plot([t * scale for t, _ in val], [v for _, v in val], "o", ms=4, color=colour, mec="black",
                    mew=0.5, label=None if train else label)
    plotting.unigram_line(ax, unigram)
    if x == "flops" or plotting.spans_decades(span):
        ax.set_xscale("log")
    plotting.finish(ax, title or "training loss (EMA; raw faint) and validation loss (dots)",
                    "training FLOPs (paper convention)" if x == "flops" else "tokens", "loss (nats / token)")
    fig.tight_layout()
    return fig


def write_run_plot(run_dir: Path) -> Path | None:
    """RUN/loss.png (training and validation loss against tokens) of a finished run; None without matplotlib."""
    run = Run(run_dir.name, run_dir, RunSummary.read(run_dir / SUMMARY))
    return plot_losses([run], run_dir / "loss.png",
                       title=f"{run_dir.name}: training loss (EMA; raw faint) and validation loss (dots)")
