"""Rendering a fit: the console summary and the report folder (report.md, fit.json, points.csv, plot)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lowrank_lm.scaling.fit import FitResult, Series
from lowrank_lm.scaling.table import write_csv, write_json

POINT_COLUMNS = ("series", "name", "x", "loss", "loss_err", "quality", "source")


def _g(v: float | None, digits: int = 4) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def _ci(ci: Any, digits: int = 3) -> str:
    if ci is None:
        return ""
    lo, hi = ci
    return f" [{_g(lo, digits)}, {_g(hi, digits) if hi is not None else '∞'}]"


def _meet(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    if c.get("at") is None:
        return f"no meeting below {c['searched_up_to']:.2g}"
    ci = c.get("ci") or [None, None]
    hi = f"{ci[1]:.2g}" if ci[1] is not None else "beyond search"
    lo = f"{ci[0]:.2g}" if ci[0] is not None else "?"
    share = c.get("share_of_replicates")
    tail = f" ({share:.0%} of replicates meet)" if share is not None else ""
    return f"{c['at']:.3g} [{lo}, {hi}]{tail}"


def _gap(g: dict[str, Any] | None) -> str:
    if not g:
        return ""
    gaps = ", ".join(f"{s} {v:+.3f}" for s, v in zip(g["sizes"], g["gaps"]))
    return f"{g['per_decade']:+.3g}/decade{_ci(g['per_decade_ci'], 2)} {g['verdict']} ({gaps})"


def series_rows(result: FitResult) -> list[list[str]]:
    """One row per series: name, points, fit mode, alpha [CI], E [CI], A, slope [CI], loss/decade."""
    rows = []
    for name, f in result.series.items():
        rows.append([name, str(f.n_points), f.mode, _g(f.alpha) + _ci(f.alpha_ci), _g(f.E) + _ci(f.E_ci),
                     _g(f.A, 3), _g(f.slope) + _ci(f.slope_ci), _g(f.loss_per_decade) + _ci(f.loss_per_decade_ci),
                     f"{_g(f.x_min, 3)} – {_g(f.x_max, 3)}"])
    return rows


SERIES_HEADER = ["series", "n", "fit", "alpha [CI]", "E [CI]", "A", "log-log slope [CI]", "loss/decade [CI]",
                 "x range"]
COMPARE_HEADER = ["a", "b", "alpha a-b [CI]", "verdict", "log-log slope a-b [CI]", "verdict",
                  "loss/decade a-b [CI]", "verdict", "curves meet at [CI]", "gap a-b by size, per decade [CI]"]
# (JSON key, label, verdict key) of the three measures of steepness a comparison reports
MEASURES = (("alpha", "alpha", "verdict"), ("slope", "log-log slope", "slope_verdict"),
            ("loss_per_decade", "loss/decade", "loss_per_decade_verdict"))


def comparison_rows(result: FitResult) -> list[list[str]]:
    rows = []
    for c in result.comparisons:
        row = [c["a"], c["b"]]
        for key, _, verdict in MEASURES:
            row += [_g(c[f"{key}_diff"], 3) + _ci(c[f"{key}_diff_ci"], 2), c[verdict]]
        rows.append([*row, _meet(c["crossing"]), _gap(c.get("gap_by_size"))])
    return rows


def comparison_text(result: FitResult) -> str:
    """The comparisons as one block per pair (a table would be too wide for a terminal)."""
    lines = []
    for c in result.comparisons:
        lines.append(f"{c['a']} vs {c['b']} (a - b):")
        for key, label, verdict in MEASURES:
            diff = f"{c[f'{key}_diff']:+.3g}{_ci(c[f'{key}_diff_ci'], 2)}"
            lines.append(f"  {label:<14} {diff:<30} {c[verdict]}")
        if c["crossing"]:
            lines.append(f"  {'curves meet':<14} {_meet(c['crossing'])}")
        if c.get("gap_by_size"):
            lines.append(f"  {'gap by size':<14} {_gap(c['gap_by_size'])}")
    return "\n".join(lines)


def _table_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _table_md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(v.replace("|", "/") for v in r) + " |" for r in rows]
    return "\n".join(lines)


def all_warnings(result: FitResult) -> list[str]:
    """Global warnings, then each series' own (deduplicated, in order)."""
    seen: dict[str, None] = dict.fromkeys(result.warnings)
    for name, f in result.series.items():
        for w in f.warnings:
            seen.setdefault(f"{name}: {w}", None)
    return list(seen)


def format_text(result: FitResult, source: str, skipped: int = 0) -> str:
    """The console summary of a fit."""
    s = result.settings
    head = (f"fit of {source}: {sum(f.n_points for f in result.series.values())} points in "
            f"{len(result.series)} series, x = {s.get('x', 'flops')}, E mode {s['mode']}, "
            f"{s['n_bootstrap']} bootstrap replicates, {s['level']:.0%} intervals, seed {s['seed']}")
    if skipped:
        head += f"\n({skipped} unfinished row(s) skipped)"
    parts = [head, "", _table_text(SERIES_HEADER, series_rows(result))]
    if result.comparisons:
        parts += ["", comparison_text(result)]
    warns = all_warnings(result)
    if warns:
        parts += ["", "warnings:"] + [f"  - {w}" for w in warns]
    return "\n".join(parts)


def write_report(result: FitResult, series: dict[str, Series], rows: list[dict[str, Any]], out_dir: str | Path,
                 source: str, command: str, overlay: dict[str, Series] | None = None,
                 skipped: int = 0) -> dict[str, Path]:
    """Write report.md, fit.json, points.csv and scaling.png to ``out_dir``; returns their paths."""
    from lowrank_lm.scaling.plots import plot_fit

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_column = result.settings.get("x", "flops")
    paths = {"report": out / "report.md", "json": out / "fit.json", "points": out / "points.csv",
             "plot": out / "scaling.png"}
    write_json(result.to_json(), paths["json"])
    write_csv(rows, paths["points"], POINT_COLUMNS)
    plot_fit(result, series, paths["plot"], x_column, overlay)
    s = result.settings
    md = [f"# Scaling fit: {source}", "",
          f"Command: `{command}`", "",
          f"{sum(f.n_points for f in result.series.values())} points in {len(result.series)} series "
          f"(x = `{x_column}`{f'; {skipped} unfinished row(s) skipped' if skipped else ''}). "
          f"Model L = E + A·x^(-alpha), least squares in log space, E mode **{s['mode']}**; "
          f"{s['n_bootstrap']} parametric bootstrap replicates, {s['level']:.0%} percentile intervals, "
          f"seed {s['seed']}.",
          "", "## Series", "", _table_md(SERIES_HEADER, series_rows(result)), ""]
    if result.comparisons:
        md += ["## Comparisons", "",
               "a − b of the exponent, the log-log slope and the loss per decade (the slope of the paper's figure), "
               "each with the interval of the difference. A direction "
               "is stated only when that interval excludes 0 and the two series' own intervals do not overlap; "
               "otherwise the verdict is *not distinguishable*. The meeting point is where the fitted curve of a "
               "meets the baseline's (an extrapolation when it lies beyond the data). The gap by size is the loss "
               "difference between models of the same size, regressed on the baseline's compute (t interval): the "
               "paper's own reading of its figure.", "",
               _table_md(COMPARE_HEADER, comparison_rows(result)), ""]
        notes = [f"- {c['a']} vs {c['b']}: {n}" for c in result.comparisons for n in c.get("notes", [])]
        notes += [f"- {c['a']} vs {c['b']}: {c['crossing']['note']}" for c in result.comparisons if c["crossing"]]
        md += notes + ([""] if notes else [])
    warns = all_warnings(result)
    if warns:
        md += ["## Warnings", ""] + [f"- {w}" for w in warns] + [""]
    md += ["## Figure", "", f"![loss vs {x_column}]({paths['plot'].name})", "",
           "## How to read this", "",
           "- *alpha* is the exponent of the fitted curve; the *log-log slope* is model-free (least squares of "
           "ln L on ln x over the points) and *loss/decade* is the slope of the paper's semi-log figure.",
           "- With few points per series the fit cannot separate E from alpha; the mode line above and the "
           "warnings say what was assumed. A shared E makes exponents comparable; it is not a measurement of E.",
           "- Intervals cover noise around the fitted curve (the residual scatter, or the stated per-point "
           "errors when larger). They do not cover a wrong functional form, other seeds or hyper-parameters, or "
           "the error of reading values off a figure beyond what `loss_err` states.",
           "- Input points (with their source and quality tags when known) are in `points.csv`; all numbers are "
           "in `fit.json`.", ""]
    paths["report"].write_text("\n".join(md))
    return paths
