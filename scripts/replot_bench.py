"""Redraw the figures of recorded benchmark results in the project's current plotting style, from the rows
that the benchmark wrote (NAME.json: {"meta", "rows"}); nothing is measured again:

    python scripts/replot_bench.py docs/results/efficiency-cpu/*/ docs/results/efficiency-gpu/*/

Each folder's ffn.json, decode.json and train.json are drawn by the bench's own plot function
(lowrank_lm.bench.ffn.plot_ffn, decode.plot_decode, train.plot_train) into that folder; it prints what it wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folders: list[str]) -> None:
    from lowrank_lm.bench.decode import plot_decode
    from lowrank_lm.bench.ffn import plot_ffn
    from lowrank_lm.bench.train import plot_train

    plots = {"ffn.json": plot_ffn, "decode.json": plot_decode, "train.json": plot_train}
    for folder in map(Path, folders):
        for name, plot in plots.items():
            path = folder / name
            if path.is_file():
                rows = json.loads(path.read_text())["rows"]
                if name == "decode.json":  # benches older than static decoding ran the eager loop only
                    rows = [{"decode": "eager", **r} for r in rows]
                for written in plot(rows, folder):
                    print(written)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python scripts/replot_bench.py FOLDER [FOLDER ...] (folders of bench results)")
    main(sys.argv[1:])
