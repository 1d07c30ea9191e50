"""Fit L = E + A*C^-alpha per series of a results table (or the paper's points), compare exponents."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from lowrank_lm.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", metavar="RESULTS.csv",
                   help="a results table with columns series, flops, loss (e.g. from `lowrank-lm sweep`), "
                        "or `paper` for the paper's published points")
    p.add_argument("--json", action="store_true",
                   help='print {"series": {NAME: {"alpha", "alpha_ci", "E", "A", "slope", "n_points", ...}}, '
                        '"comparisons": [...]}')
    p.add_argument("--report", metavar="DIR", default=None,
                   help="write report.md, fit.json, points.csv and scaling.png to DIR")
    p.add_argument("--x", default="flops", metavar="COLUMN",
                   help="the compute axis: flops (default), flops_6n, params, params_non_embedding, tokens")
    p.add_argument("--mode", default="auto", choices=["auto", "free", "shared", "power", "fixed"],
                   help="E per series (free), one E for all (shared), E = 0 (power), E = --E (fixed); auto picks "
                        "free with >= 5 points per series, else shared")
    p.add_argument("--E", type=float, default=None, dest="fixed_E", help="fix the irreducible loss E")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates (default 1000)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (fits are deterministic for a seed)")
    p.add_argument("--series", default=None, metavar="A,B,...", help="fit only these series")
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="the series the others are compared with for meeting points (default: dense)")
    p.add_argument("--overlay-paper", action="store_true", help="draw the paper's points on the plot too")


def run(args: argparse.Namespace) -> None:
    from lowrank_lm.scaling.compare import compare_all
    from lowrank_lm.scaling.fit import FitOptions, Series, fit_all
    from lowrank_lm.scaling.paper_data import paper_points
    from lowrank_lm.scaling.report import format_text, write_report
    from lowrank_lm.scaling.table import read_points

    if args.results == "paper":
        rows, skipped, source = paper_points(args.x), 0, "the paper's published points"
        if not rows:
            raise UserError(f"the paper dataset has no column {args.x}; use --x flops, params or tokens")
    else:
        rows, skipped = read_points(args.results, args.x)
        source = args.results
    if args.series:
        wanted = [s.strip() for s in args.series.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {r["series"] for r in rows})
        if unknown:
            have = ", ".join(sorted({r["series"] for r in rows}))
            raise UserError(f"--series: no series named {', '.join(unknown)} (have: {have})")
        rows = [r for r in rows if r["series"] in wanted]
    series = Series.from_rows(rows)
    if args.baseline is not None and args.baseline not in series:
        raise UserError(f"--baseline {args.baseline}: no such series (have: {', '.join(series)})")
    result = fit_all(series, FitOptions(mode=args.mode, fixed_E=args.fixed_E, n_bootstrap=args.bootstrap,
                                        level=args.level, seed=args.seed))
    result.settings.update(x=args.x, source=source)
    result.comparisons = compare_all(result, args.baseline, points=series)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_text(result, source, skipped))
    if args.report:
        overlay = _paper_overlay(args.x, list(series)) if args.overlay_paper else None
        command = "lowrank-lm " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["fit"] \
            else f"lowrank-lm fit {args.results}"
        paths = write_report(result, series, rows, args.report, source, command, overlay, skipped)
        sys.stdout.flush()
        print(f"report: {paths['report']} (plot {paths['plot'].name}, fit.json, points.csv)", file=sys.stderr)


def _paper_overlay(x_column: str, names: list[str]) -> dict:
    """The paper's series with the same names as the user's (same colours); if none match, its figure's three."""
    from lowrank_lm.scaling.fit import Series
    from lowrank_lm.scaling.paper_data import FIGURE_SERIES, paper_points

    paper = Series.from_rows(paper_points(x_column))
    keep = [n for n in names if n in paper] or [n for n in FIGURE_SERIES if n in paper]
    return {n: paper[n] for n in keep}
