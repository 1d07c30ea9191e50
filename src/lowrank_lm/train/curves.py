"""Loss curves of finished runs: one run's training and validation loss read back from metrics.jsonl, drawn.

The trainer draws RUN/loss.png with it at the end of a run, and ``lowrank-lm compare`` draws several runs on
one figure; it lives with the trainer so that the trainer imports nothing above it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lowrank_lm import plotting
from lowrank_lm.atomic import atomic_open
from lowrank_lm.plotting import distinct_colours
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


def plot_losses(runs: list[Run], path: Path, x: str = "tokens") -> Path | None:
    """Loss against ``x`` (tokens or flops) for every run, one colour each; None without matplotlib."""
    plt = plotting.pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, colour in zip(runs, distinct_colours(len(runs))):
        scale = run.flops_per_token if x == "flops" else 1.0
        train, val = run.curves()
        if train:
            ax.plot([t * scale for t, _ in train], [v for _, v in train], lw=1, alpha=0.5, color=colour)
        if val:
            ax.plot([t * scale for t, _ in val], [v for _, v in val], "o-", ms=3, color=colour,
                    label=f"{run.label} (val {run.summary.final_val_loss:.3f})")
        elif train:
            ax.lines[-1].set_label(run.label)
    ax.set_xlabel("training FLOPs (paper convention)" if x == "flops" else "tokens")
    ax.set_ylabel("loss (thin: training, dots: validation)")
    if x == "flops":
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:  # a temporary file of its own, renamed: a link at path is replaced
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def write_run_plot(run_dir: Path) -> Path | None:
    """RUN/loss.png (training and validation loss against tokens) of a finished run; None without matplotlib."""
    run = Run(run_dir.name, run_dir, RunSummary.read(run_dir / SUMMARY))
    return plot_losses([run], run_dir / "loss.png")
