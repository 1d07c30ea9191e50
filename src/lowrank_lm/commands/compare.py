"""Put finished runs side by side: a table, and loss-vs-tokens and loss-vs-FLOPs plots.

The table has params, FFN params, tokens, training FLOPs, tokens/s, validation loss and perplexity and
wall time; --out DIR also writes it as markdown and JSON with the two plots (PNG, needs matplotlib).
RUN may be a run folder or a folder of runs (a sweep's output folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = ["lowrank-lm compare runs/demo/dense runs/demo/lowrank-32",
            "lowrank-lm compare runs/sweeps/cpu-mini --out runs/compare-cpu-mini"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (with summary.json) or folders of runs")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write compare.md, compare.json and the loss plots (PNG, needs matplotlib) here")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list instead of the table")


def run(args: argparse.Namespace) -> None:
    from lowrank_lm.run_compare import find_runs, markdown_table, table_rows, write_comparison

    runs, notes = find_runs(args.runs)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(table_rows(runs), indent=1))
    else:
        print(markdown_table(runs), end="")
    if args.out:
        written = write_comparison(runs, Path(args.out))
        if not any(p.suffix == ".png" for p in written):
            print("note: plots skipped (pip install 'lowrank-lm[analysis]' for matplotlib)", file=sys.stderr)
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
