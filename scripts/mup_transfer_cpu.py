"""Learning-rate transfer on CPU: a learning-rate grid at three widths, under standard and muP, per structure.

Trains configs/cpu/tiny.yaml (2 blocks, seq 128, bf16) at each (structure, parametrization, width, learning
rate) for a fixed token budget from the same seed, plus a second seed at the base width, and writes one JSON
line per run, the table of validation losses, the optimum's shift from the smallest to the largest width and
a plot (loss against learning rate, one panel per structure and parametrization, one line per width):

    python scripts/mup_transfer_cpu.py --out docs/results/mup-cpu

Run it alone on an idle machine. docs/results/mup-cpu.md reports what it printed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

CONFIG = "configs/cpu/tiny.yaml"
COMMON = ["model.num_layers=2", "model.seq_len=128", "train.global_batch_size=16", "train.eval_tokens=8192",
          "train.eval_interval=100000", "train.log_interval=100000", "train.checkpoint_interval=100000",
          "train.keep_checkpoints=1"]
STRUCTURES = {"dense": [], "lowrank-32": ["model.ffn.kind=lowrank", "model.ffn.fraction=0.32"]}


def run_one(runs: Path, kind: str, param: str, width: int, lr: float, seed: int, tokens: int, base: int) -> dict:
    """Train one cell and return its record (final validation loss)."""
    from lowrank_lm.resolve import load_config
    from lowrank_lm.train import run_training

    extra = [f"model.hidden_dim={width}", f"train.lr={lr}", f"train.seed={seed}", f"train.tokens={tokens}",
             f"train.out_dir={runs / f'{kind}-{param}-w{width}-lr{lr:g}-s{seed}'}"]
    if param == "mup":
        extra += ["model.parametrization=mup", f"model.mup_base_width={base}"]
    cfg = load_config(CONFIG, COMMON + STRUCTURES[kind] + extra)
    start = time.perf_counter()
    summary = run_training(cfg, overwrite=True)
    return {"structure": kind, "parametrization": param, "width": width, "lr": lr, "seed": seed,
            "val_loss": summary.final_val_loss, "seconds": round(time.perf_counter() - start, 1)}


def optimum(records: list[dict], kind: str, param: str, width: int, seed: int) -> tuple[float, float]:
    """(learning rate, loss) of the lowest validation loss in one curve."""
    best = min((r for r in records if (r["structure"], r["parametrization"], r["width"], r["seed"])
                == (kind, param, width, seed)), key=lambda r: r["val_loss"])
    return best["lr"], best["val_loss"]


def report(records: list[dict], widths: list[int], lrs: list[float], seeds: list[int]) -> str:
    """The markdown tables: losses per cell, then the optimum per width and its shift in grid steps."""
    lines = ["| structure | param | width | " + " | ".join(f"{lr:g}" for lr in lrs) + " |",
             "|---|---|---|" + "---|" * len(lrs)]
    keyed = {(r["structure"], r["parametrization"], r["width"], r["lr"], r["seed"]): r["val_loss"] for r in records}
    for kind in STRUCTURES:
        for param in ("standard", "mup"):
            for width in widths:
                cells = [keyed.get((kind, param, width, lr, seeds[0])) for lr in lrs]
                lines.append(f"| {kind} | {param} | {width} | "
                             + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")
    lines += ["", "| structure | param | optimum at " + " | ".join(f"w{w}" for w in widths)
              + " | shift (grid steps) | seed noise at the base width |", "|---|---|" + "---|" * (len(widths) + 2)]
    for kind in STRUCTURES:
        for param in ("standard", "mup"):
            best = [optimum(records, kind, param, w, seeds[0])[0] for w in widths]
            shift = round(math.log2(best[-1] / best[0]))
            diffs = [abs(keyed[(kind, param, widths[0], lr, seeds[0])] - keyed[(kind, param, widths[0], lr, s)])
                     for lr in lrs for s in seeds[1:] if (kind, param, widths[0], lr, s) in keyed]
            noise = f"mean abs diff {sum(diffs) / len(diffs):.4f} over {len(diffs)} lrs" if diffs else ""
            lines.append(f"| {kind} | {param} | " + " | ".join(f"{b:g}" for b in best) + f" | {shift:+d} | {noise} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], widths: list[int], seed: int, path: Path) -> None:
    """Loss against learning rate (log), one panel per structure and parametrization, one line per width: the
    structure's colour family, darker for wider (the project's one style, lowrank_lm.plotting)."""
    from lowrank_lm import plotting

    with plotting.style() as plt:
        if plt is None:
            return
        fig, axes = plt.subplots(len(STRUCTURES), 2, figsize=(9, 3.2 * len(STRUCTURES)), squeeze=False)
        for row, kind in enumerate(STRUCTURES):
            colours = plotting.paired_colours([(kind, w) for w in widths])
            for col, param in enumerate(("standard", "mup")):
                ax = axes[row][col]
                for width, colour in zip(widths, colours):
                    key = (kind, param, width, seed)
                    pts = sorted((r["lr"], r["val_loss"]) for r in records
                                 if (r["structure"], r["parametrization"], r["width"], r["seed"]) == key)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, color=colour,
                            label=f"width {width}")
                ax.set_xscale("log")
                plotting.finish(ax, f"{kind}, {param}", "learning rate", "validation loss (nats / token)")
        fig.tight_layout()
        plotting.save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="runs.jsonl, table.md and loss_vs_lr.png")
    parser.add_argument("--runs", type=Path, default=Path("runs/mup-transfer"), help="the run folders")
    parser.add_argument("--widths", default="64,128,256")
    parser.add_argument("--lrs", default="6.25e-4,1.25e-3,2.5e-3,5e-3,1e-2,2e-2,4e-2")
    parser.add_argument("--seeds", default="1005,2005", help="the second seed runs at the base width only")
    parser.add_argument("--tokens", type=int, default=100_000)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(r["structure"], r["parametrization"], r["width"], r["lr"], r["seed"]) for r in records}
    cells = [(k, p, w, lr, seeds[0]) for k in STRUCTURES for p in ("standard", "mup") for w in widths for lr in lrs]
    cells += [(k, p, widths[0], lr, s) for k in STRUCTURES for p in ("standard", "mup") for lr in lrs
              for s in seeds[1:]]
    for cell in cells:
        if cell in done:
            continue
        record = run_one(args.runs, *cell, tokens=args.tokens, base=widths[0])
        records.append(record)
        with log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
    table = report(records, widths, lrs, seeds)
    (args.out / "table.md").write_text(table)
    plot(records, widths, seeds[0], args.out / "loss_vs_lr.png")
    print(table)


if __name__ == "__main__":
    main()
