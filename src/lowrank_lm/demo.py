"""The demo job: a dense model and its LowRank twin (R = hidden/4, ~32% of the FFN) on the same tokens."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from lowrank_lm.config import Config


def twin(cfg: Config, out: Path) -> list[tuple[str, Config]]:
    """The dense run and its LowRank-32% twin, each with its own out_dir under ``out``."""
    ffn = cfg.model.ffn
    dense = replace(cfg, model=replace(cfg.model, ffn=replace(ffn, kind="dense", rank=None, num_blocks=None,
                                                              init="random")),
                    train=replace(cfg.train, out_dir=str(out / "dense")))
    lowrank = replace(cfg, model=replace(cfg.model, ffn=replace(ffn, kind="lowrank", rank=cfg.model.hidden_dim // 4,
                                                                num_blocks=None, init="spectral")),
                      train=replace(cfg.train, out_dir=str(out / "lowrank-32")))
    return [("dense", dense), ("lowrank-32", lowrank)]


def _table(rows: list[dict[str, Any]], unigram_ppl: float) -> str:
    head = "| model | params | FFN params | training FLOPs | tokens | tokens/s | val loss | val ppl |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['params_ffn'] / 1e6:.3f}M | "
                     f"{r['train_flops']:.3e} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | "
                     f"{r['final_val_loss']:.4f} | {r['final_val_ppl']:.2f} |")
    lines.append(f"| unigram baseline | | | | | | {math.log(unigram_ppl):.4f} | {unigram_ppl:.2f} |")
    return "\n".join(lines)


def _plot(out: Path, names: list[str]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from lowrank_lm.train.metrics import read_metrics

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        recs = read_metrics(out / name / "metrics.jsonl")
        train = [(r["tokens"], r["loss"]) for r in recs if "loss" in r and not r.get("skipped")]
        val = [(r["tokens"], r["val_loss"]) for r in recs if "val_loss" in r]
        line = ax.plot(*zip(*train), lw=1, alpha=0.6, label=f"{name} train")[0]
        if val:
            ax.plot(*zip(*val), "o-", color=line.get_color(), label=f"{name} val")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    path = out / "loss.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(cfg: Config, out: Path, overwrite: bool = False) -> list[dict[str, Any]]:
    """Prepare the data, train both runs (skipping finished ones), print the table; returns the summaries."""
    from lowrank_lm.data import prepare, unigram_perplexity
    from lowrank_lm.train import run_training

    data_dir = prepare(cfg.data)
    rows = []
    for name, run_cfg in twin(cfg, out):
        summary_path = Path(run_cfg.train.out_dir) / "summary.json"
        if summary_path.is_file() and not overwrite:
            print(f"{name}: finished earlier, reusing {summary_path}")
            summary = json.loads(summary_path.read_text())
        else:
            print(f"== training {name} ==", flush=True)
            summary = run_training(run_cfg, overwrite=overwrite)
        rows.append({**summary, "name": name})
    table = _table(rows, unigram_perplexity(data_dir))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    plot = _plot(out, [r["name"] for r in rows])
    print()
    print(table)
    print(f"\nruns: {out}/dense, {out}/lowrank-32 (metrics.jsonl, TensorBoard events, checkpoints)")
    print(f"table: {out / 'results.md'}" + (f"; plot: {plot}" if plot else ""))
    return rows
