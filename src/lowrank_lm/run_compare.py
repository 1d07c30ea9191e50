"""Runs side by side: a table from their summary.json and loss curves from their metrics.jsonl.

A path is a run folder (it has summary.json) or a folder of runs, such as a sweep's output folder
(every sub-folder with a summary.json is one run). Curves: training loss (thin) and validation loss
(dots) against tokens and against training FLOPs (tokens x the run's FLOPs per token).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from lowrank_lm import plotting, tables
from lowrank_lm.atomic import write_json_atomic, write_text_atomic
from lowrank_lm.errors import UserError
from lowrank_lm.ownership import Ownership
from lowrank_lm.run_groups import human_count
from lowrank_lm.train.curves import Run
from lowrank_lm.train.rundir import CONFIG, SUMMARY
from lowrank_lm.train.summary import RunSummary

# What compare writes into --out; the record (compare.json) marks a folder as ours for the next time.
RECORD = "compare.json"
OUTPUTS = (RECORD, "compare.md", "loss_vs_tokens.png", "loss_vs_flops.png")
NOT_OURS = "choose a new or empty --out (or one that compare wrote)"
# The summary fields the table shows.
SHOWN = ("params", "params_ffn", "tokens", "train_flops", "tokens_per_s", "final_val_loss", "final_val_ppl",
         "wall_s")


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
    rows = []
    for r in runs:
        s = r.summary
        loss = f"{s.final_val_loss:.4f}" + (" (best)" if s.final_val_loss == best and len(runs) > 1 else "")
        rows.append([r.label, s.structure, human_count(s.params), human_count(s.params_ffn), f"{s.tokens:,}",
                     f"{s.train_flops:.3e}", f"{s.tokens_per_s:,.0f}", loss, f"{s.final_val_ppl:.2f}",
                     _duration(s.wall_s)])
    return tables.markdown_table(head, rows) + "\n"


def unigram_loss(runs: list[Run]) -> tuple[float | None, str]:
    """The unigram baseline's loss (what token frequencies alone give) on the runs' validation tokens, and a
    note saying so; None and why not when the runs trained on different data or their data is not here."""
    from lowrank_lm.config import read_dict
    from lowrank_lm.data import resolve_data_dir, unigram_perplexity
    from lowrank_lm.data.manifest import MANIFEST

    dirs = set()
    for r in runs:
        raw = yaml.safe_load((r.path / CONFIG).read_text()) if (r.path / CONFIG).is_file() else None
        if not isinstance(raw, dict) or "data" not in raw:
            return None, f"no unigram baseline: {r.label} has no data settings in its {CONFIG}"
        dirs.add(resolve_data_dir(read_dict(raw).data))
    if len(dirs) != 1:
        return None, f"no unigram baseline: the runs trained on {len(dirs)} different data sets"
    (data_dir,) = dirs
    if not (data_dir / MANIFEST).is_file():
        return None, f"no unigram baseline: the runs' data ({data_dir}) is not on this machine"
    loss = math.log(unigram_perplexity(data_dir))
    return loss, f"unigram baseline (token frequencies alone): val loss {loss:.4f}"


def compare_ownership(out: Path) -> Ownership:
    """What compare owns in its --out folder; its record is compare.json (lowrank_lm.ownership)."""
    return Ownership(out, RECORD, "lowrank-lm compare")


def write_comparison(runs: list[Run], out: Path, baseline: str | None = None,
                     unigram: tuple[float | None, str] | None = None) -> list[Path]:
    """compare.json, compare.md (groups over seeds, then every run) and the two loss plots (when matplotlib is
    there, seed bands per group) under ``out``; ``unigram`` is :func:`unigram_loss`'s answer when the caller
    has it (it reads every training shard)."""
    from lowrank_lm.compare_plots import plot_groups
    from lowrank_lm.run_groups import compare_groups, group_table, notes

    groups, noise = compare_groups(runs, baseline)
    unigram_value, unigram_note = unigram if unigram is not None else unigram_loss(runs)
    owner = compare_ownership(out)
    plots = OUTPUTS[2:] if plotting.pyplot() is not None else ()
    owner.claim({*OUTPUTS[:2], *plots}, NOT_OURS)  # only what it will write: without matplotlib, no plots
    written = [out / "compare.md"]
    md = ["## Configurations (mean over seeds)", "", group_table(groups, baseline), *notes(groups, noise),
          unigram_note, "", "## Runs", "", markdown_table(runs)]
    write_text_atomic(out / "compare.md", "\n".join(md))
    for x in ("tokens", "flops"):
        target = out / f"loss_vs_{x}.png"
        made = plot_groups(groups, target, x, unigram_value)
        if made is not None:
            written.append(made)
        else:
            owner.remove([target.name])  # ours from an earlier compare, of other runs
    record = {"runs": table_rows(runs), "groups": [g.to_json() for g in groups],
              "seed_noise": noise.to_json() if noise else None, "unigram_loss": unigram_value,
              "files": [*sorted(p.name for p in written), RECORD]}
    write_json_atomic(out / RECORD, record)
    return [out / RECORD, *written]
