"""Runs side by side: a table from their summary.json and loss curves from their metrics.jsonl.

A path is a run folder (it has summary.json) or a folder of runs, such as a sweep's output folder
(every sub-folder with a summary.json is one run). Curves: training loss (thin) and validation loss
(dots) against tokens and against training FLOPs (tokens x the run's FLOPs per token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_lm.errors import UserError
from lowrank_lm.train.rundir import CONFIG, METRICS, SUMMARY
from lowrank_lm.train.summary import RunSummary

# What compare writes into --out; the record (compare.json) marks a folder as ours for the next time.
RECORD = "compare.json"
OUTPUTS = (RECORD, "compare.md", "loss_vs_tokens.png", "loss_vs_flops.png")
# The summary fields the table shows.
SHOWN = ("params", "params_ffn", "tokens", "train_flops", "tokens_per_s", "final_val_loss", "final_val_ppl",
         "wall_s")


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


def find_runs(paths: list[str]) -> tuple[list[Run], list[str]]:
    """The finished runs under ``paths`` (run folders, or folders of runs) and notes on what was skipped."""
    runs: list[Run] = []
    notes: list[str] = []
    for text in paths:
        p = Path(text)
        if not p.is_dir():
            raise UserError(f"{p} is not a folder; give run folders or folders of runs (e.g. a sweep's output)")
        if (p / SUMMARY).is_file():
            runs.append(Run(p.name, p, RunSummary.read(p / SUMMARY)))
            continue
        found = sorted(d for d in p.iterdir() if d.is_dir() and (d / SUMMARY).is_file())
        unfinished = sorted(d.name for d in p.iterdir() if d.is_dir() and not (d / SUMMARY).is_file()
                            and (d / CONFIG).is_file())
        if not found:
            hint = f" ({len(unfinished)} unfinished)" if unfinished else ""
            raise UserError(f"{p} holds no finished run{hint}: no {SUMMARY} in it or its sub-folders; "
                            "give a run folder or a folder of runs")
        runs += [Run(f"{p.name}/{d.name}", d, RunSummary.read(d / SUMMARY)) for d in found]
        if unfinished:
            notes.append(f"{p}: skipped {len(unfinished)} unfinished run(s): {', '.join(unfinished)}")
    labels = [r.label for r in runs]
    for r in runs:  # the same folder name twice (two sweeps): tell them apart by their full path
        if labels.count(r.label) > 1:
            r.label = str(r.path)
    return runs, notes


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _duration(seconds: float) -> str:
    from lowrank_lm.train.progress import format_duration

    return format_duration(seconds)


def table_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One plain row per run: the numbers of the table, for JSON."""
    return [{"run": r.label, "path": str(r.path), **{k: getattr(r.summary, k) for k in SHOWN},
             "structure": r.summary.structure} for r in runs]


def markdown_table(runs: list[Run]) -> str:
    """The comparison table, best validation loss marked."""
    best = min(r.summary.final_val_loss for r in runs)
    head = ["run", "FFN", "params", "FFN params", "tokens", "training FLOPs", "tokens/s", "val loss", "val ppl",
            "wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        s = r.summary
        loss = f"{s.final_val_loss:.4f}" + (" (best)" if s.final_val_loss == best and len(runs) > 1 else "")
        lines.append(f"| {r.label} | {s.structure} | {_count(s.params)} | {_count(s.params_ffn)} | "
                     f"{s.tokens:,} | {s.train_flops:.3e} | {s.tokens_per_s:,.0f} | {loss} | "
                     f"{s.final_val_ppl:.2f} | {_duration(s.wall_s)} |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_losses(runs: list[Run], path: Path, x: str = "tokens") -> Path | None:
    """Loss against ``x`` (tokens or flops) for every run, one colour each; None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    from lowrank_lm.scaling.plots import distinct_colours

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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def prepare_out(out: Path) -> None:
    """Use ``out`` when it is new, empty or an earlier compare output; refuse any other folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RECORD).is_file():
        raise UserError(f"--out {out} holds files compare did not write (no {RECORD}); choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)


def _earlier_files(out: Path) -> set[str]:
    """The files an earlier compare wrote into ``out`` (its record lists them)."""
    try:
        return set(json.loads((out / RECORD).read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        return set()


def write_comparison(runs: list[Run], out: Path, baseline: str | None = None) -> list[Path]:
    """compare.json, compare.md (groups over seeds, then every run) and the two loss plots (when matplotlib is
    there, seed bands per group) under ``out``."""
    from lowrank_lm.compare_plots import plot_groups
    from lowrank_lm.run_groups import compare_groups, group_table, notes

    groups, noise = compare_groups(runs, baseline)
    earlier = _earlier_files(out)
    prepare_out(out)
    written = [out / "compare.md"]
    md = ["## Configurations (mean over seeds)", "", group_table(groups, baseline), *notes(groups, noise), "",
          "## Runs", "", markdown_table(runs)]
    (out / "compare.md").write_text("\n".join(md))
    for x in ("tokens", "flops"):
        target = out / f"loss_vs_{x}.png"
        made = plot_groups(groups, target, x)
        if made is not None:
            written.append(made)
        elif target.name in earlier and target.is_file():  # ours from an earlier compare, of other runs
            target.unlink()
    record = {"runs": table_rows(runs), "groups": [g.to_json() for g in groups],
              "seed_noise": noise.to_json() if noise else None,
              "files": [*sorted(p.name for p in written), RECORD]}
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return [out / RECORD, *written]


def write_run_plot(run_dir: Path) -> Path | None:
    """RUN/loss.png (training and validation loss against tokens) of a finished run; None without matplotlib."""
    run = Run(run_dir.name, run_dir, RunSummary.read(run_dir / SUMMARY))
    return plot_losses([run], run_dir / "loss.png")
