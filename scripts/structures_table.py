"""The tables of docs/results/structures-cpu.md, from ``bench ffn --out`` folders and equal-token run folders.

    python scripts/structures_table.py --bench OUT/ffn-fwd-fp32 OUT/ffn-fwd-bf16 ... --runs OUT/runs

Each bench folder holds one ``ffn.json`` (one mode and dtype, every kind at one fraction); the run folders
are named ``s<scale>-<kind>`` (see scripts/structures_cpu.sh) and hold the trainer's summary.json and config.yaml.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lowrank_lm import sizing
from lowrank_lm.layers import registry
from lowrank_lm.resolve import load_config


def _setting(kind: str, rank: int | None, blocks: int | None) -> str:
    return registry.describe(kind, rank, blocks) or "-"


def speed_table(folders: list[Path]) -> str:
    """One row per kind and width; per bench folder (mode, dtype): speed-up over dense (efficiency)."""
    runs = [json.loads((f / "ffn.json").read_text())["rows"] for f in folders]
    heads = [f"{r[0]['mode']} {r[0]['dtype']}" for r in runs]
    lines = ["| width | kind | setting | FFN params | " + " | ".join(heads) + " |",
             "|---|---|---|---|" + "---|" * len(heads)]
    for row in runs[0]:
        cells = []
        for rows in runs:
            m = next(r for r in rows if (r["width"], r["kind"], r["premerge"]) == (row["width"], row["kind"], False))
            cells.append(f"{m['median_ms']:.2f} ms" if m["kind"] == registry.DENSE
                         else f"{m['speedup']:.2f}x ({m['efficiency']:.2f})")
        if row["premerge"]:
            continue
        lines.append(f"| {row['width']} | {row['kind']} | {_setting(row['kind'], row['rank'], row['num_blocks'])} | "
                     f"{row['param_fraction']:.1%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loss_table(runs: Path) -> str:
    """One row per kind; per scale: setting, weight share of a structured FFN block and final validation loss."""
    scales = sorted({p.name.split("-")[0] for p in runs.iterdir() if (p / "summary.json").exists()})
    lines = ["| kind | " + " | ".join(f"{s}: setting, FFN params, val loss" for s in scales) + " |",
             "|---|" + "---|" * len(scales)]
    for kind in registry.kinds():
        cells = []
        for s in scales:
            folder = runs / f"{s}-{kind}"
            if not (folder / "summary.json").exists():
                cells.append("-")
                continue
            summary = json.loads((folder / "summary.json").read_text())
            model = load_config(folder / "config.yaml").model
            share = sizing.ffn_fraction(model) if kind != registry.DENSE else 1.0
            cells.append(f"{_setting(kind, model.ffn.rank, model.ffn.num_blocks)}, {share:.1%}, "
                         f"{summary['final_val_loss']:.4f}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", nargs="*", type=Path, default=[], help="bench ffn --out folders")
    p.add_argument("--runs", type=Path, default=None, help="folder of the s<scale>-<kind> run folders")
    args = p.parse_args()
    if args.bench:
        print(speed_table(args.bench), end="\n\n")
    if args.runs:
        print(loss_table(args.runs))


if __name__ == "__main__":
    main()
