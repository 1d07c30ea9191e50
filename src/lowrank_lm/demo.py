"""The demo job: a dense model and its LowRank twin (R = hidden/4, ~32% of the FFN) on the same tokens.

The demo writes ``results.json`` (the rows of its table) beside the runs; the table it prints is
:func:`demo_table` of that record, and so is the README's (a test checks it against
``docs/results/demo.json``, a copy of that file from ``make demo``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from lowrank_lm.atomic import write_json_atomic, write_text_atomic
from lowrank_lm.config import Config, config_to_dict, flatten
from lowrank_lm.errors import UserError
from lowrank_lm.layers import registry
from lowrank_lm.ownership import Ownership
from lowrank_lm.resolve import load_config
from lowrank_lm.tables import markdown_table

# Settings that say where and how verbosely a run writes, not what it computes: a finished run whose saved
# config differs only in these is the same experiment.
BOOKKEEPING = {"train.out_dir", "train.resume", "train.device", "train.wandb", "train.log_interval",
               "train.keep_checkpoints", "train.checkpoint_interval", "train.checkpoint_minutes", "data.dir",
               "data.num_workers"}
# The columns of a demo row, taken from the run's summary.json.
ROW_KEYS = ("name", "params", "params_ffn", "train_flops", "tokens", "tokens_per_s", "final_val_loss",
            "final_val_ppl")


RECORD = ".lowrank-lm-demo.json"
OUTPUTS = ("results.json", "results.md", "loss.png")
NOT_OURS = "choose another --out (a new or empty folder, or a demo's)"


def demo_ownership(out: Path, runs: list[str]) -> Ownership:
    """What the demo owns in its --out folder: its table, plot and run folders (lowrank_lm.ownership)."""

    def older_demo(folder: Path) -> set[str] | None:
        # a demo folder of an older version (no record): nothing but the demo's names, and its table and plot
        # only beside a demo's results.json (its rows); the run folders are checked as runs when trained
        names = {*OUTPUTS, *runs}
        if not all(p.name in names for p in folder.iterdir()):
            return None
        if any(os.path.lexists(folder / n) for n in OUTPUTS):
            try:
                rows = json.loads((folder / "results.json").read_text())["rows"]
                names |= {str(r["name"]) for r in rows}
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return names

    return Ownership(out, RECORD, "lowrank-lm demo", older_demo)


def twin(cfg: Config, out: Path) -> list[tuple[str, Config]]:
    """The dense run and its twin of the paper's headline structure (:data:`registry.HEADLINE` at R = hidden/4,
    ~32% of the FFN), each with its paper's default init and its own out_dir under ``out``."""
    ffn, base, headline = cfg.model.ffn, registry.DENSE, registry.HEADLINE
    runs = [(base, replace(ffn, kind=base, rank=None, num_blocks=None, init=registry.get(base).default_init)),
            (f"{headline}-32", replace(ffn, kind=headline, rank=cfg.model.hidden_dim // 4, num_blocks=None,
                                       init=registry.get(headline).default_init))]
    return [(name, replace(cfg, model=replace(cfg.model, ffn=f), train=replace(cfg.train, out_dir=str(out / name))))
            for name, f in runs]


def demo_table(record: dict[str, Any]) -> str:
    """The markdown table of a demo record (``{"rows": [...], "unigram_ppl": x}``, as in results.json)."""
    head = ["model", "params", "FFN params", "training FLOPs", "tokens", "tokens/s", "val loss", "val ppl"]
    rows: list[list[str | None]] = [
        [r["name"], f"{r['params'] / 1e6:.2f}M", f"{r['params_ffn'] / 1e6:.3f}M", f"{r['train_flops']:.3e}",
         f"{r['tokens']:,}", f"{r['tokens_per_s']:,.0f}", f"{r['final_val_loss']:.4f}", f"{r['final_val_ppl']:.2f}"]
        for r in record["rows"]]
    unigram = record["unigram_ppl"]
    rows.append(["unigram baseline", *[None] * 5, f"{math.log(unigram):.4f}", f"{unigram:.2f}"])
    return markdown_table(head, rows)


def config_differences(saved: Config, wanted: Config) -> list[str]:
    """``key=saved-value`` for each setting (bookkeeping aside) in which ``saved`` differs from ``wanted``."""
    a, b = flatten(config_to_dict(saved)), flatten(config_to_dict(wanted))
    return [f"{k}={a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b))
            if k not in BOOKKEEPING and a.get(k) != b.get(k)]


def _check_reusable(run_dir: Path, cfg: Config) -> None:
    """Refuse a run folder whose saved config is another experiment than ``cfg``."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    diff = config_differences(load_config(saved_path), cfg)
    if diff:
        more = f" and {len(diff) - 2} more" if len(diff) > 2 else ""
        raise UserError(f"{run_dir} holds a run trained with other settings ({'; '.join(diff[:2])}{more}); "
                        "pass --overwrite to train it again, or choose another --out")


def _plot(out: Path, names: list[str], unigram_loss: float) -> Path | None:
    """out/loss.png: both runs' losses against tokens in the project's style, with the unigram baseline;
    None without matplotlib."""
    from lowrank_lm import plotting
    from lowrank_lm.train.curves import Run, loss_figure
    from lowrank_lm.train.rundir import SUMMARY
    from lowrank_lm.train.summary import RunSummary

    if plotting.pyplot() is None:
        return None
    runs = [Run(name, out / name, RunSummary.read(out / name / SUMMARY)) for name in names]
    fig = loss_figure(runs, "tokens", "demo: dense and its LowRank twin on the same tokens", unigram_loss)
    return plotting.save(fig, out / "loss.png")


def run_demo(cfg: Config, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Prepare the data, train both runs (reusing finished ones of the same config), print the table;
    returns the record written to ``out/results.json``."""
    from lowrank_lm.data import prepare, unigram_perplexity
    from lowrank_lm.train import run_training
    from lowrank_lm.train.rundir import RunDir
    from lowrank_lm.train.summary import RunSummary

    pairs = twin(cfg, out)
    # before any work: a folder that is not a demo's, or one of another experiment, is refused at once
    names = [name for name, _ in pairs]
    demo_ownership(out, names).claim({*OUTPUTS, *names}, NOT_OURS)
    if not overwrite:
        for _, run_cfg in pairs:
            _check_reusable(Path(run_cfg.train.out_dir), run_cfg)
    data_dir = prepare(cfg.data)
    rows = []
    for name, run_cfg in pairs:
        summary_path = RunDir(run_cfg.train.out_dir).summary
        if summary_path.is_file() and not overwrite:
            print(f"{name}: finished earlier with the same settings, reusing {summary_path}")
            summary = RunSummary.read(summary_path)
        else:
            print(f"== training {name} ==", flush=True)
            summary = run_training(run_cfg, overwrite=overwrite)
            if not summary.finished:  # Ctrl-C: checkpointed; the same command resumes
                raise KeyboardInterrupt
        rows.append({**{k: getattr(summary, k) for k in ROW_KEYS}, "name": name})
    record = {"config": config_to_dict(cfg), "rows": rows, "unigram_ppl": unigram_perplexity(data_dir)}
    table = demo_table(record)
    write_json_atomic(out / "results.json", record)
    write_text_atomic(out / "results.md", table + "\n")
    plot = _plot(out, [r["name"] for r in rows], math.log(record["unigram_ppl"]))
    print()
    print(table)
    print(f"\nruns: {', '.join(f'{out}/{name}' for name, _ in pairs)} (metrics.jsonl, TensorBoard events, checkpoints)")
    print(f"table: {out / 'results.md'} (rows in {out / 'results.json'})" + (f"; plot: {plot}" if plot else ""))
    return record
