"""Learning-rate transfer from two learning-rate sweeps: the same grid under the standard parametrization and
under µP (configs/sweeps/lr-cpu-standard.yaml and configs/sweeps/lr-cpu.yaml).

Reads each sweep's results.csv and prints (and writes to OUT/table.md) the validation loss of every cell, the
best loss per width (whether the wider model does better at its best rate), the optimal learning rate per
width, its shift from the narrowest to the widest width in grid steps (factors of the grid's ratio), and beside it the seed noise at the base width (where the sweep has a second seed): the
mean loss difference between the seeds and how far the optimum itself moves between them. The optimum is
read two ways: the grid point of lowest loss, and the vertex of a parabola through that point and its two
neighbours in log learning rate (a fractional grid position; an optimum on the grid's edge is marked '<' or
'>' because the true one may lie beyond). Also writes OUT/loss_vs_lr.png (one row per structure, standard
and µP side by side, one line per width; the base width's second seed dashed) and copies of both results
tables (OUT/<sweep>.csv):

    python scripts/lr_transfer_table.py --standard runs/sweeps/lr-cpu-standard --mup runs/sweeps/lr-cpu \\
        --out docs/results/mup-cpu
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

PARAMS = ("standard", "mup")


@dataclass(frozen=True)
class Cell:
    """One finished run of a learning-rate sweep."""

    label: str  # structure and fraction: dense, lowrank-32
    kind: str  # the registry kind: dense, lowrank
    param: str
    width: int
    lr: float
    seed: int
    loss: float


def read_sweep(folder: Path, param: str) -> list[Cell]:
    """The finished runs of one sweep's results.csv (series ``<label>-lr<rate>``, sizes ``w<width>``)."""
    cells = []
    with (folder / "results.csv").open() as f:
        for row in csv.DictReader(f):
            if row["status"] != "done" or not row["loss"]:
                continue
            width = re.fullmatch(r"w(\d+)", row["size"])
            if width is None:
                raise SystemExit(f"{folder}: size {row['size']!r} is not w<width>")
            label = re.sub(r"-lr[0-9.e+-]+$", "", row["series"])
            cells.append(Cell(label, row["structure"], param, int(width.group(1)), float(row["lr"]),
                              int(row["seed"]), float(row["loss"])))
    return cells


def curve(cells: list[Cell], label: str, param: str, width: int, seed: int) -> list[tuple[float, float]]:
    """(learning rate, loss) of one structure, parametrization, width and seed, by rate."""
    return sorted((c.lr, c.loss) for c in cells
                  if (c.label, c.param, c.width, c.seed) == (label, param, width, seed))


def vertex(points: list[tuple[float, float]]) -> tuple[int, float, str]:
    """The lowest point's grid index, the parabola vertex (in grid steps from the first rate) through it and its
    neighbours in log rate, and '<' / '>' when the lowest point is the grid's first / last (no vertex then)."""
    losses = [loss for _, loss in points]
    i = min(range(len(losses)), key=losses.__getitem__)
    if i == 0 or i == len(losses) - 1:
        return i, float(i), "<" if i == 0 else ">"
    step = math.log(points[1][0] / points[0][0])
    xs = [math.log(points[j][0] / points[0][0]) / step for j in (i - 1, i, i + 1)]
    y0, y1, y2 = losses[i - 1:i + 2]
    curvature = y0 - 2 * y1 + y2  # > 0 at a grid minimum (x spacing 1)
    return i, xs[1] + 0.5 * (y0 - y2) / curvature, ""


@dataclass
class Transfer:
    """The optimum per width of one structure and parametrization, and its seed noise at the base width."""

    label: str
    param: str
    optima: list[tuple[int, float, str]]  # per width: vertex()
    rates: list[float]
    seed_loss_diff: float | None  # mean |loss(seed a) - loss(seed b)| over the base width's rates
    seed_optimum_diff: float | None  # vertex(seed b) - vertex(seed a) at the base width, grid steps

    @property
    def grid_shift(self) -> int:
        return self.optima[-1][0] - self.optima[0][0]

    @property
    def vertex_shift(self) -> float:
        return self.optima[-1][1] - self.optima[0][1]


def transfer(cells: list[Cell], label: str, param: str, widths: list[int], seeds: list[int]) -> Transfer:
    """The optimum at every width (first seed) and the base width's seed noise (second seed, when run)."""
    curves = [curve(cells, label, param, w, seeds[0]) for w in widths]
    twin = curve(cells, label, param, widths[0], seeds[1]) if len(seeds) > 1 else []
    loss_diff = optimum_diff = None
    if twin and [r for r, _ in twin] == [r for r, _ in curves[0]]:
        loss_diff = sum(abs(a - b) for (_, a), (_, b) in zip(curves[0], twin)) / len(twin)
        optimum_diff = vertex(twin)[1] - vertex(curves[0])[1]
    return Transfer(label, param, [vertex(c) for c in curves], [r for r, _ in curves[0]], loss_diff, optimum_diff)


def swept(cells: list[Cell], label: str) -> list[str]:
    """The parametrizations under which ``label`` was swept (a structure may have a µP sweep only)."""
    return [param for param in PARAMS if any(c.label == label and c.param == param for c in cells)]


def _rate(t: Transfer, k: int) -> str:
    i, _, edge = t.optima[k]
    return f"{edge}{t.rates[i]:g}"


def tables(cells: list[Cell], labels: list[str], widths: list[int], seeds: list[int]) -> str:
    """The markdown tables: the loss of every cell (first seed), then the optimum per width and its shift."""
    rates = sorted({c.lr for c in cells})
    out = ["| structure | param | width | " + " | ".join(f"{r:g}" for r in rates) + " |",
           "|---|---|---|" + "---|" * len(rates)]
    for label in labels:
        for param in swept(cells, label):
            for w in widths:
                by_rate = dict(curve(cells, label, param, w, seeds[0]))
                best = min(by_rate.values(), default=None)
                out.append(f"| {label} | {param} | {w} | " + " | ".join(
                    "" if r not in by_rate else (f"**{by_rate[r]:.4f}**" if by_rate[r] == best
                                                 else f"{by_rate[r]:.4f}") for r in rates) + " |")
    out += ["", "| structure | param | " + " | ".join(f"optimum w{w}" for w in widths)
            + " | shift (grid) | shift (vertex) | seed noise: loss | seed noise: optimum (vertex) |",
            "|---|---|" + "---|" * (len(widths) + 4)]
    for label in labels:
        for param in swept(cells, label):
            have = [len(curve(cells, label, param, w, seeds[0])) for w in widths]
            if min(have) < len(rates):  # a sweep still running, or failed runs: no optimum to read yet
                out.append(f"| {label} | {param} | " + " | ".join(f"{n} of {len(rates)} rates" for n in have)
                           + " | | | | |")
                continue
            t = transfer(cells, label, param, widths, seeds)
            noise = ("", "") if t.seed_loss_diff is None else (f"{t.seed_loss_diff:.4f}",
                                                               f"{t.seed_optimum_diff:+.2f}")
            out.append(f"| {label} | {param} | " + " | ".join(_rate(t, k) for k in range(len(widths)))
                       + f" | {t.grid_shift:+d} | {t.vertex_shift:+.2f} | {noise[0]} | {noise[1]} |")
    out += ["", "| structure | param | " + " | ".join(f"best loss w{w}" for w in widths) + " |",
            "|---|---|" + "---|" * len(widths)]
    for label in labels:  # does the wider model do better at its best rate? (µP promises it does)
        for param in swept(cells, label):
            best = [min((v for _, v in curve(cells, label, param, w, seeds[0])), default=None) for w in widths]
            out.append(f"| {label} | {param} | " + " | ".join("" if b is None else f"{b:.4f}" for b in best) + " |")
    return "\n".join(out) + "\n"


def plot(cells: list[Cell], labels: list[str], widths: list[int], seeds: list[int], path: Path) -> None:
    """Loss against learning rate: one row per structure, standard and µP side by side, one line per width in
    the structure's colour family (darker: wider); the base width's second seed dashed."""
    from lowrank_lm import plotting
    from lowrank_lm.layers import registry

    kinds = {c.label: c.kind for c in cells}
    with plotting.style() as plt:
        if plt is None:
            return
        fig, axes = plt.subplots(len(labels), 2, figsize=(9, 2.9 * len(labels)), squeeze=False, sharey="row")
        for row, label in enumerate(labels):
            colours = plotting.paired_colours([(kinds[label], w) for w in widths], registry.colormaps())
            for col, param in enumerate(PARAMS):
                ax = axes[row][col]
                if param not in swept(cells, label):
                    ax.set_axis_off()
                    ax.text(0.5, 0.5, f"{label}: no {param} sweep", ha="center", va="center", transform=ax.transAxes)
                    axes[row][1 - col].tick_params(axis="y", labelleft=True)  # the row's only y labels
                    continue
                for w, colour in zip(widths, colours):
                    pts = curve(cells, label, param, w, seeds[0])
                    ax.plot([r for r, _ in pts], [v for _, v in pts], "o-", ms=3, color=colour, label=f"width {w}")
                for seed in seeds[1:]:
                    pts = curve(cells, label, param, widths[0], seed)
                    if pts:
                        ax.plot([r for r, _ in pts], [v for _, v in pts], "--", color=colours[0], lw=1,
                                label=f"width {widths[0]}, seed {seed}")
                ax.set_xscale("log")
                plotting.finish(ax, f"{label}, {'µP' if param == 'mup' else 'standard'}", "learning rate",
                                "validation loss")
        fig.tight_layout()
        plotting.save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standard", type=Path, required=True, help="the standard-parametrization sweep's folder")
    parser.add_argument("--mup", type=Path, required=True, help="the µP sweep's folder")
    parser.add_argument("--out", type=Path, required=True, help="table.md, loss_vs_lr.png and the results copies")
    args = parser.parse_args()
    cells = read_sweep(args.standard, "standard") + read_sweep(args.mup, "mup")
    labels = sorted(dict.fromkeys(c.label for c in cells), key=lambda s: (s != "dense", s))
    widths = sorted({c.width for c in cells})
    seeds = sorted({c.seed for c in cells}, key=lambda s: -sum(c.seed == s for c in cells))  # most runs first
    args.out.mkdir(parents=True, exist_ok=True)
    text = tables(cells, labels, widths, seeds)
    (args.out / "table.md").write_text(text)
    for folder in (args.standard, args.mup):
        shutil.copyfile(folder / "results.csv", args.out / f"{folder.name}.csv")
    plot(cells, labels, widths, seeds, args.out / "loss_vs_lr.png")
    print(text, end="")


if __name__ == "__main__":
    main()
