"""Print an IsoFLOP sweep's cells as a markdown table: per budget and size, each series' loss per seed and mean.

    python scripts/isoflop_table.py runs/sweeps/isoflop-cpu/results.csv [--baseline dense]

Each row is one (budget, size); for each series the losses of its seeds and their mean, and, for every series
but the baseline, its mean minus the baseline's (same size, same budget: the structure trains on the tokens
that spend the budget on its own model). Only finished runs (status done) are read.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from statistics import fmean


def read_cells(path: str) -> dict[tuple[float, str, str], dict[str, dict[str, float]]]:
    """{(budget FLOPs, budget label, size): {series: {seed: loss}}} of the finished runs."""
    cells: dict[tuple[float, str, str], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("status", "done") != "done":
                continue
            budget = row["budget"]
            cells[(float(budget.lstrip("C")), budget, row["size"])][row["series"]][row.get("seed") or "-"] = \
                float(row["loss"])
    return cells


def table(cells: dict, baseline: str) -> str:
    series = sorted({s for v in cells.values() for s in v}, key=lambda s: (s != baseline, s))
    others = [s for s in series if s != baseline]
    head = ["budget", "size"] + [f"{s} (seeds; mean)" for s in series] + [f"{s} - {baseline}" for s in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(cells):
        _, label, size = key
        by = cells[key]
        means = {s: fmean(by[s].values()) for s in series if by.get(s)}
        row = [label, size]
        for s in series:
            row.append(f"{', '.join(f'{v:.4f}' for _, v in sorted(by[s].items()))}; **{means[s]:.4f}**"
                       if s in means else "–")
        row += [f"{means[s] - means[baseline]:+.4f}" if s in means and baseline in means else "–" for s in others]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a sweep's results.csv")
    parser.add_argument("--baseline", default="dense", help="the series the others are compared with")
    args = parser.parse_args()
    print(table(read_cells(args.results), args.baseline))


if __name__ == "__main__":
    main()
