"""Put finished runs side by side: configurations averaged over seeds, and loss-vs-tokens and loss-vs-FLOPs plots.

Runs that differ only in their seed form one group: its mean validation loss with a 95% interval over the
seeds, the seed-to-seed noise, and the difference to the baseline group of the same shape and budget
(--baseline, default dense) with its interval and a paired or Welch t test; groups sorted by loss; the unigram
baseline's loss when the runs trained on one prepared data set that is on this machine. --out DIR
also writes the groups and every run (params, tokens, FLOPs, tokens/s, loss, wall time) as markdown and JSON
with the two plots (PNG, needs matplotlib). RUN may be a run folder or a folder of runs (a sweep's output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = ["lowrank-lm compare runs/demo/dense runs/demo/lowrank-32",
            "lowrank-lm compare runs/sweeps/cpu-mini --out runs/compare-cpu-mini"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """RUN folders, and --out, --baseline, --json."""
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (with summary.json) or folders of runs")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write compare.md, compare.json and the loss plots (PNG, needs matplotlib) here")
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="the group (or structure) the others are compared with, at equal shape and token budget "
                        "(default: dense)")
    p.add_argument("--json", action="store_true",
                   help='print {"groups": [...], "seed_noise": ..., "unigram_loss": ..., "runs": [...]} instead of the '
                        'tables')


def run(args: argparse.Namespace) -> None:
    """Print the table of the runs grouped by configuration; with --out also write it with the plots."""
    from lowrank_lm.run_compare import find_runs, table_rows, unigram_loss, write_comparison
    from lowrank_lm.run_groups import compare_groups, group_table, notes

    runs, skipped = find_runs(args.runs)
    for note in skipped:
        print(f"note: {note}", file=sys.stderr)
    groups, noise = compare_groups(runs, args.baseline)
    unigram = unigram_loss(runs)
    if args.json:
        print(json.dumps({"groups": [g.to_json() for g in groups], "seed_noise": noise.to_json() if noise else None,
                          "unigram_loss": unigram[0], "runs": table_rows(runs)}, indent=1))
    else:
        print(group_table(groups, args.baseline), end="")
        print("\n".join([*notes(groups, noise), unigram[1]]))
    if args.out:
        written = write_comparison(runs, Path(args.out), args.baseline, unigram)
        if not any(p.suffix == ".png" for p in written):
            print("note: plots skipped (pip install 'lowrank-lm[analysis]' for matplotlib)", file=sys.stderr)
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
