"""Fit L = E + A*C^-alpha (or the joint law L(N, D)) per series of a results table, compare the series."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from lowrank_lm.errors import UserError

EXAMPLES = ["lowrank-lm fit runs/sweeps/cpu-mini/results.csv --report runs/sweeps/cpu-mini/fit",
            "lowrank-lm fit paper --series dense,lowrank-63,lowrank-32",
            "lowrank-lm fit paper --law shared --series dense,lowrank-63,lowrank-32"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """RESULTS.csv (or ``paper``), the law to fit and its options, --report and --json."""
    p.add_argument("results", metavar="RESULTS.csv",
                   help="a results table with columns series, flops, loss (e.g. from `lowrank-lm sweep`), "
                        "or `paper` for the paper's published points")
    p.add_argument("--json", action="store_true",
                   help='print {"series": {NAME: {"alpha", "alpha_ci", "E", "A", "slope", "n_points", ...}}, '
                        '"comparisons": [...]}')
    p.add_argument("--report", metavar="DIR", default=None,
                   help="write report.md, fit.json, points.csv and scaling.png to DIR")
    p.add_argument("--law", default="compute", choices=["compute", "joint", "shared", "shared-joint"],
                   help="compute (default): L = E + A C^-alpha per series; joint: L = E + A/N^alpha + B/D^beta per "
                        "series (Hoffmann et al.), with IsoFLOP profiles when the table holds several sizes per "
                        "budget; reads series, params, tokens, loss (and flops, budget, seed); shared: "
                        "L = E + A (k C)^-alpha with E, A, alpha shared by all series and one compute multiplier k "
                        "per series against --baseline; shared-joint: L = E + A (m N)^-alpha + B D^-beta, all shared "
                        "but a parameter multiplier m per series (needs several sizes and token budgets)")
    p.add_argument("--params", default=None, choices=["total", "non-embedding"],
                   help="joint law: N counts all parameters (total, the default) or the non-embedding ones")
    p.add_argument("--x", default=None, metavar="COLUMN",
                   help="compute law: the compute axis: flops (default), flops_6n, params, params_non_embedding, "
                        "tokens")
    p.add_argument("--mode", default=None, choices=["auto", "free", "shared", "power", "fixed"],
                   help="compute law: E per series (free), one E for all (shared), E = 0 (power), E = --E (fixed); "
                        "auto (default) picks free with >= 5 points per series, else shared")
    p.add_argument("--E", type=float, default=None, dest="fixed_E", help="fix the irreducible loss E")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates (default 1000)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (fits are deterministic for a seed)")
    p.add_argument("--series", default=None, metavar="A,B,...", help="fit only these series")
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="the series the others are compared with (meeting points; the shared law's k = 1) "
                        "(default: dense)")
    p.add_argument("--overlay-paper", action="store_true", help="draw the paper's points on the plot too")


def _check_law_options(args: argparse.Namespace) -> None:
    """Options of the other law are errors, not silently ignored."""
    if args.law in ("joint", "shared-joint"):
        given = [flag for flag, value in (("--x", args.x), ("--mode", args.mode), ("--E", args.fixed_E),
                                          ("--baseline", args.baseline if args.law == "joint" else None),
                                          ("--overlay-paper", args.overlay_paper))
                 if value not in (None, False)]
        if given:
            raise UserError(f"{', '.join(given)} apply to the compute law only; drop them or use --law compute")
        if args.results == "paper":
            raise UserError("the paper trains each size on one budget, so N and D move together and the joint law "
                            "cannot separate them; use --law compute for `fit paper`")
    elif args.params is not None:
        raise UserError("--params applies to the joint law only; add --law joint (or use --x for the compute law)")
    if args.law == "shared":
        given = [flag for flag, value in (("--mode", args.mode), ("--E", args.fixed_E),
                                          ("--overlay-paper", args.overlay_paper)) if value not in (None, False)]
        if given:
            raise UserError(f"{', '.join(given)} apply to the compute law only (the shared law fits one free E); "
                            "drop them or use --law compute")


REPORT_RECORD = ".lowrank-lm-fit.json"
REPORT_FILES = ("report.md", "fit.json", "points.csv", "scaling.png", "shared.png", "joint.png", "isoflop.png")
"""Every file a --report folder may get (whichever law): recorded as fit's before any is written."""


def _claim_report(folder: str) -> None:
    """Make --report DIR fit's own before any work: new, empty, or written by an earlier fit; a same-named file
    that fit did not write is refused (lowrank_lm.ownership)."""
    from pathlib import Path

    from lowrank_lm.ownership import Ownership

    Ownership(Path(folder), REPORT_RECORD, "lowrank-lm fit").claim(
        REPORT_FILES, "give --report a new or empty folder, or one an earlier fit wrote")


def run(args: argparse.Namespace) -> None:
    """Fit the chosen law to the results, print the fits and comparisons, and write --report."""
    _check_law_options(args)
    if args.report and args.law != "shared-joint":  # shared-joint refuses --report itself
        _claim_report(args.report)
    if args.law == "joint":
        _run_joint(args)
        return
    if args.law == "shared-joint":
        _run_shared_joint(args)
        return
    args.x = args.x or "flops"
    if args.law == "shared":
        _run_shared(args)
        return
    args.mode = args.mode or "auto"
    from lowrank_lm.stats.compare import compare_all
    from lowrank_lm.stats.fit import FitOptions, Series, fit_all
    from lowrank_lm.stats.report import format_text, write_report
    from lowrank_lm.stats.seeds import average_seeds, has_seeds
    from lowrank_lm.stats.table import split_token_budgets

    rows, skipped, source = _compute_rows(args)
    rows = split_token_budgets(_select(rows, args.series))
    rows, noise = average_seeds(rows) if has_seeds(rows) else (rows, None)
    rows, off_frontier = _frontier(rows, args.x)
    series = Series.from_rows(rows)
    if args.baseline is not None and args.baseline not in {n.split("@")[0] for n in series} | set(series):
        raise UserError(f"--baseline {args.baseline}: no such series (have: {', '.join(series)})")
    result = fit_all(series, FitOptions(mode=args.mode, fixed_E=args.fixed_E, n_bootstrap=args.bootstrap,
                                        level=args.level, seed=args.seed))
    result.settings.update(x=args.x, source=source, seed_noise=noise.to_json() if noise else None,
                           off_frontier=off_frontier)
    result.comparisons = compare_all(result, args.baseline, points=series)
    # The report is written before anything is printed: `fit ... --report DIR | head` closes the pipe early.
    paths = None
    if args.report:
        overlay = _paper_overlay(args.x, list(series)) if args.overlay_paper else None
        paths = write_report(result, series, rows, args.report, source, _command_line(args), overlay, skipped)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_text(result, source, skipped))
    if paths:
        sys.stdout.flush()
        print(f"report: {paths['report']} (plot {paths['plot'].name}, fit.json, points.csv)", file=sys.stderr)


def _compute_rows(args: argparse.Namespace) -> tuple[list[dict], int, str]:
    """The rows of the compute axis (from a table or the paper), the unfinished ones skipped, and the source."""
    from lowrank_lm.stats.paper_data import paper_points
    from lowrank_lm.stats.table import read_points

    if args.results == "paper":
        rows = paper_points(args.x)
        if not rows:
            raise UserError(f"the paper dataset has no column {args.x}; use --x flops, params or tokens")
        return rows, 0, "the paper's published points"
    rows, skipped = read_points(args.results, args.x)
    return rows, skipped, args.results


def _run_shared(args: argparse.Namespace) -> None:
    from lowrank_lm.stats.fit import FitOptions, Series
    from lowrank_lm.stats.seeds import average_seeds, has_seeds
    from lowrank_lm.stats.shared import fit_shared
    from lowrank_lm.stats.shared_report import format_shared_text, write_shared_report

    rows, skipped, source = _compute_rows(args)
    rows = _select(rows, args.series)
    rows, noise = average_seeds(rows) if has_seeds(rows) else (rows, None)
    rows, off_frontier = _frontier(rows, args.x)
    series = Series.from_rows(rows)
    fit = fit_shared(series, args.baseline, FitOptions(n_bootstrap=args.bootstrap, level=args.level, seed=args.seed))
    fit.settings.update(x=args.x, source=source, seed_noise=noise.to_json() if noise else None,
                        off_frontier=off_frontier)
    paths = None
    if args.report:  # before printing, as for the compute law
        paths = write_shared_report(fit, series, rows, args.report, source, _command_line(args), skipped)
    print(json.dumps(fit.to_json(), indent=2) if args.json else format_shared_text(fit, source, skipped))
    if paths:
        sys.stdout.flush()
        print(f"report: {paths['report']} (plot {paths['plot'].name}, fit.json, points.csv)", file=sys.stderr)


def _run_shared_joint(args: argparse.Namespace) -> None:
    from lowrank_lm.stats.joint import N_COLUMNS, JointOptions, series_from_rows
    from lowrank_lm.stats.shared_joint import fit_shared_joint, format_shared_joint
    from lowrank_lm.stats.table import read_points

    if args.report:
        raise UserError("--report is not written for --law shared-joint yet; use --json (or --law shared --report)")
    rows, _ = read_points(args.results, N_COLUMNS[args.params or "total"])
    series = series_from_rows(_select(rows, args.series), args.results)
    fit = fit_shared_joint(series, args.baseline, JointOptions(n_bootstrap=args.bootstrap, level=args.level,
                                                               seed=args.seed))
    print(json.dumps(fit.to_json(), indent=2) if args.json else format_shared_joint(fit, args.results))


def _frontier(rows: list[dict], x: str) -> tuple[list[dict], int]:
    """On a compute axis, an IsoFLOP design's best size per budget (stats.table.isoflop_frontier); on a
    parameter or token axis every point stays (each size is its own x there)."""
    from lowrank_lm.stats.table import isoflop_frontier

    return isoflop_frontier(rows) if x in ("flops", "flops_6n") else (rows, 0)


def _select(rows: list[dict], wanted_text: str | None) -> list[dict]:
    """The rows of the series named by --series (all rows without it)."""
    if not wanted_text:
        return rows
    wanted = [s.strip() for s in wanted_text.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {r["series"] for r in rows})
    if unknown:
        have = ", ".join(sorted({r["series"] for r in rows}))
        raise UserError(f"--series: no series named {', '.join(unknown)} (have: {have})")
    return [r for r in rows if r["series"] in wanted]


def _command_line(args: argparse.Namespace) -> str:
    if sys.argv[1:2] == ["fit"]:
        return "lowrank-lm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"lowrank-lm fit {args.results} --law {args.law}"


def _run_joint(args: argparse.Namespace) -> None:
    from lowrank_lm.stats.isoflop import analyse
    from lowrank_lm.stats.joint import N_COLUMNS, JointOptions, fit_joint, series_from_rows
    from lowrank_lm.stats.report import format_joint_text, write_joint_report
    from lowrank_lm.stats.table import read_points

    params = args.params or "total"
    rows, skipped = read_points(args.results, N_COLUMNS[params])
    rows = _select(rows, args.series)
    series = series_from_rows(rows, args.results)
    result = fit_joint(series, JointOptions(n_bootstrap=args.bootstrap, level=args.level, seed=args.seed),
                       skip_unfit=True)
    result.settings.update(params=params, source=args.results)
    iso, comparisons = analyse(series, result.series, result.noise, args.bootstrap, args.level, args.seed)
    if not result.series and not iso:
        raise UserError(f"{result.warnings[0].removesuffix(': no joint fit')}, and no budget holds three sizes for "
                        "an IsoFLOP profile; run more sizes or budgets")
    paths = None
    if args.report:  # before printing, as for the compute law
        paths = write_joint_report(result, iso, comparisons, series, args.report, args.results, _command_line(args),
                                   skipped)
    if args.json:
        out = result.to_json()
        out["isoflop"] = {k: v.to_json() for k, v in iso.items()}
        out["comparisons"] = comparisons
        print(json.dumps(out, indent=2))
    else:
        print(format_joint_text(result, iso, comparisons, args.results, skipped))
    if paths:
        sys.stdout.flush()
        print(f"report: {paths['report']} (plots {', '.join(p.name for k, p in paths.items() if k.startswith('plot'))}"
              ", fit.json)", file=sys.stderr)


def _paper_overlay(x_column: str, names: list[str]) -> dict:
    """The paper's series with the same names as the user's (same colours); if none match, its figure's three."""
    from lowrank_lm.stats.fit import Series
    from lowrank_lm.stats.paper_data import FIGURE_SERIES, paper_points

    paper = Series.from_rows(paper_points(x_column))
    keep = [n for n in names if n in paper] or [n for n in FIGURE_SERIES if n in paper]
    return {n: paper[n] for n in keep}
