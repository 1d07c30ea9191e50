"""Rendering a fit: the console summary and the report folder (report.md, fit.json, points.csv, plot)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lowrank_lm.atomic import write_text_atomic
from lowrank_lm.stats.fit import FitResult, Series
from lowrank_lm.stats.table import write_csv, write_json
from lowrank_lm.tables import markdown_table, text_table

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
    if (ci[0] is not None and c["at"] < ci[0]) or (ci[1] is not None and c["at"] > ci[1]):
        tail += ("; the estimate lies outside its interval: the replicates' meeting points are skewed (many meet "
                 "later or never); trust the interval")
    return f"{c['at']:.3g} [{lo}, {hi}]{tail}"


def _gap(g: dict[str, Any] | None) -> str:
    if not g:
        return ""
    gaps = ", ".join(f"{s} {v:+.3f}" for s, v in zip(g["sizes"], g["gaps"]))
    return f"{g['per_decade']:+.3g}/decade{_ci(g['per_decade_ci'], 2)} {g['verdict']} ({gaps})"


def _floor_zero(ci: tuple[float, float] | None) -> tuple[float, float] | None:
    """An interval whose lower end is the solver's rendering of the bound 0 (1e-40 beside 0.3) shows 0."""
    if ci is None or not (math.isfinite(ci[0]) and math.isfinite(ci[1])):
        return ci
    return (0.0 if abs(ci[0]) < 1e-6 * abs(ci[1]) else ci[0], ci[1])


def series_rows(result: FitResult) -> list[list[str]]:
    """One row per series: name, points, fit mode, alpha [CI], E [CI], A, slope [CI], loss/decade."""
    rows = []
    for name, f in result.series.items():
        rows.append([name, str(f.n_points), f.mode, _g(f.alpha) + _ci(f.alpha_ci), _g(f.E) + _ci(_floor_zero(f.E_ci)),
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
    """One table row per compared pair: each measure's difference [interval] and verdict, where the curves meet,
    and the gap by size."""
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


_table_text = text_table


def _table_md(header: list[str], rows: list[list[str]]) -> str:
    return markdown_table(header, [[v.replace("|", "/") for v in r] for r in rows])


def all_warnings(result: FitResult) -> list[str]:
    """Global warnings, then each series' own (deduplicated, in order)."""
    seen: dict[str, None] = dict.fromkeys(result.warnings)
    for name, f in result.series.items():
        for w in f.warnings:
            seen.setdefault(f"{name}: {w}", None)
    return list(seen)


def frontier_line(settings: dict[str, Any]) -> str | None:
    """What an IsoFLOP design's compute-axis fit left out (None when it left nothing out)."""
    left = settings.get("off_frontier") or 0
    if not left:
        return None
    return (f"IsoFLOP design: at each FLOP budget a series' point is its best size (the lower envelope of loss in "
            f"compute); {left} other size(s)' points are left out of this curve (--law joint fits them all)")


def head_notes(skipped: int, settings: dict[str, Any]) -> str:
    """The lines under a console summary's first line: unfinished rows skipped, points off the IsoFLOP frontier."""
    frontier = frontier_line(settings)
    return (f"\n({skipped} unfinished row(s) skipped)" if skipped else "") + (f"\n{frontier}" if frontier else "")


def noise_line(settings: dict[str, Any]) -> str:
    """The measured run-to-run noise, for the reader to hold beside the differences compared."""
    n = settings.get("seed_noise")
    if not n:
        return ("run-to-run noise: not measured (one seed per point); the intervals know only the scatter around "
                "the fitted curves")
    return (f"run-to-run noise (seed to seed, pooled over {n['cells']} points, {n['dof']} degrees of freedom): "
            f"{n['sd_loss']:.3g} in loss ({n['sd_log']:.2%}) for one run; it is a floor on the bootstrap noise of "
            "each point's mean")


def format_text(result: FitResult, source: str, skipped: int = 0) -> str:
    """The console summary of a fit."""
    s = result.settings
    head = (f"fit of {source}: {sum(f.n_points for f in result.series.values())} points in "
            f"{len(result.series)} series, x = {s.get('x', 'flops')}, E mode {s['mode']}, "
            f"{s['n_bootstrap']} bootstrap replicates, {s['level']:.0%} intervals, seed {s['seed']}")
    head += head_notes(skipped, s)
    parts = [head, "", _table_text(SERIES_HEADER, series_rows(result))]
    if result.comparisons:
        parts += ["", noise_line(s), comparison_text(result)]
    warns = all_warnings(result)
    if warns:
        parts += ["", "warnings:"] + [f"  - {w}" for w in warns]
    return "\n".join(parts)


def write_report(result: FitResult, series: dict[str, Series], rows: list[dict[str, Any]], out_dir: str | Path,
                 source: str, command: str, overlay: dict[str, Series] | None = None,
                 skipped: int = 0) -> dict[str, Path]:
    """Write report.md, fit.json, points.csv and scaling.png to ``out_dir``; returns their paths."""
    from lowrank_lm.stats.plots import plot_fit

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_column = result.settings.get("x", "flops")
    paths = {"report": out / "report.md", "json": out / "fit.json", "points": out / "points.csv",
             "plot": out / "scaling.png"}
    write_json(result.to_json(), paths["json"])
    write_csv(rows, paths["points"], POINT_COLUMNS)
    plot_fit(result, series, paths["plot"], x_column, overlay)
    s = result.settings
    frontier = frontier_line(s)
    md = [f"# Scaling fit: {source}", "",
          f"Command: `{command}`", "",
          f"{sum(f.n_points for f in result.series.values())} points in {len(result.series)} series "
          f"(x = `{x_column}`{f'; {skipped} unfinished row(s) skipped' if skipped else ''}). "
          f"Model L = E + A·x^(-alpha), least squares in log space, E mode **{s['mode']}**; "
          f"{s['n_bootstrap']} parametric bootstrap replicates, {s['level']:.0%} percentile intervals, "
          f"seed {s['seed']}.", *([f"{frontier}."] if frontier else []),
          "", "## Series", "", _table_md(SERIES_HEADER, series_rows(result)), ""]
    if result.comparisons:
        md += ["## Comparisons", "",
               "a − b of the exponent, the log-log slope and the loss per decade (the slope of the paper's figure), "
               "each with the interval of the difference. A direction "
               "is stated only when that interval excludes 0 and the two series' own intervals do not overlap; "
               "otherwise the verdict is *not distinguishable*. The meeting point is where the fitted curve of a "
               "meets the baseline's (an extrapolation when it lies beyond the data). The gap by size is the loss "
               "difference between models of the same size, regressed on the baseline's compute (t interval): the "
               "paper's own reading of its figure.", "", noise_line(s) + ".", "",
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
    write_text_atomic(paths["report"], "\n".join(md))
    return paths


# --------------------------------------------------------------------------- the joint law and IsoFLOP profiles

JOINT_HEADER = ["series", "runs", "cells", "E [CI]", "A", "alpha [CI]", "B", "beta [CI]", "resid. SE", "N range",
                "D range"]
PROFILE_HEADER = ["series", "budget", "C", "sizes", "N* [CI]", "D* [CI]", "L*", "minimum"]
LAW_HEADER = ["series", "N* ~ C^a: a [CI] (IsoFLOP)", "a [CI] (joint law)", "D* ~ C^b: b [CI] (IsoFLOP)",
              "b [CI] (joint law)"]
LAW_KEYS = {"N_isoflop": "N* exponent (IsoFLOP)", "N_joint": "N* exponent (joint law)",
            "D_isoflop": "D* exponent (IsoFLOP)", "D_joint": "D* exponent (joint law)"}


def joint_rows(result: Any) -> list[list[str]]:
    """One row per joint fit."""
    rows = []
    for name, f in result.series.items():
        rows.append([name, str(f.n_points), str(f.n_cells), _g(f.E) + _ci(f.E_ci), _g(f.A, 3),
                     _g(f.alpha) + _ci(f.alpha_ci), _g(f.B, 3), _g(f.beta) + _ci(f.beta_ci), _g(f.residual_se, 2),
                     f"{_g(f.N_range[0], 3)} – {_g(f.N_range[1], 3)}",
                     f"{_g(f.D_range[0], 3)} – {_g(f.D_range[1], 3)}"])
    return rows


def profile_rows(iso: dict[str, Any]) -> list[list[str]]:
    """One row per IsoFLOP profile."""
    rows = []
    for name, s in iso.items():
        for p in s.profiles:
            share = f", {p.share_with_minimum:.0%} of replicates" if p.share_with_minimum is not None else ""
            where = ("inside the sizes" if p.inside else "outside the sizes") if p.N_opt is not None else "none"
            rows.append([name, p.label, f"{p.C:.3g}", str(len(p.N)), _g(p.N_opt, 3) + _ci(p.N_opt_ci),
                         _g(p.D_opt, 3) + _ci(p.D_opt_ci), _g(p.L_opt), where + share])
    return rows


def law_rows(iso: dict[str, Any]) -> list[list[str]]:
    """One row per series: the exponents of N*(C) and D*(C) from both approaches."""
    def cell(s: Any, key: str) -> str:
        law = s.laws.get(key)
        return "–" if law is None else _g(law.exponent, 3) + _ci(law.exponent_ci)

    return [[name, cell(s, "N_isoflop"), cell(s, "N_joint"), cell(s, "D_isoflop"), cell(s, "D_joint")]
            for name, s in iso.items()]


def optimum_comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """a vs b on the optimum laws: exponent differences and the ratio of N* per budget."""
    lines = []
    for c in comparisons:
        lines.append(f"{c['a']} vs {c['b']} (a - b):")
        for key, e in c["exponents"].items():
            lines.append(f"  {LAW_KEYS[key]:<26} {e['diff']:+.3g}{_ci(e['diff_ci'], 2):<22} {e['verdict']}")
        for r in c["N_opt_ratio"]:
            ci = f" [{r['ratio_ci'][0]:.3g}, {r['ratio_ci'][1]:.3g}]" if r["ratio_ci"] else ""
            lines.append(f"  N* ratio a/b at {r['budget']:<9} {r['ratio']:.3g}{ci:<22} {r['verdict']}")
        for m in c.get("best_measured", []):
            ci = " [{:+.1f}%, {:+.1f}%]".format(*(100 * x for x in m["diff_log_ci"])) if m["diff_log_ci"] else ""
            edge = " (a best size is the smallest or largest tried)" if m["at_edge"] else ""
            lines.append(f"  best measured at {m['budget']:<8} {m['a_loss']:.4g} (N {m['a_N']:.3g}) vs "
                         f"{m['b_loss']:.4g} (N {m['b_N']:.3g}): ln(a/b) {100 * m['diff_log']:+.2f}%{ci}  "
                         f"{m['verdict']}{edge}")
        lines += [f"  note: {n}" for n in c["notes"]]
    return lines


def _joint_noise_line(result: Any) -> str:
    return noise_line({"seed_noise": result.noise.to_json() if result.noise else None})


def format_joint_text(result: Any, iso: dict[str, Any], comparisons: list[dict[str, Any]], source: str,
                      skipped: int = 0) -> str:
    """The console summary of joint fits and IsoFLOP profiles."""
    s = result.settings
    # every run read, not only those of the series the law could be fitted to (the profiles use them all)
    n_runs = s.get("n_runs", sum(f.n_points for f in result.series.values()))
    n_series = s.get("n_series", len(result.series))
    head = (f"joint fit of {source}: {n_runs} runs in {n_series} series, L = E + A/N^alpha + B/D^beta, "
            f"N = {s.get('params', 'total')} parameters, Huber delta {s['huber_delta']:g} on log residuals, "
            f"{s['n_bootstrap']} bootstrap replicates, {s['level']:.0%} intervals, seed {s['seed']}")
    if skipped:
        head += f"\n({skipped} unfinished row(s) skipped)"
    parts = [head, _joint_noise_line(result), "", _table_text(JOINT_HEADER, joint_rows(result))]
    if iso:
        parts += ["", "IsoFLOP profiles (parabola in ln N per budget; N*, D* with intervals):",
                  _table_text(PROFILE_HEADER, profile_rows(iso)), "",
                  _table_text(LAW_HEADER, law_rows(iso))]
    else:
        parts += ["", "no IsoFLOP profiles: no series holds three or more sizes at one budget"]
    if comparisons:
        parts += ["", _joint_noise_line(result), *optimum_comparison_lines(comparisons)]
    warns = list(result.warnings) + [f"{n}: {w}" for n, f in result.series.items() for w in f.warnings]
    warns += [f"{n}: {w}" for n, x in iso.items() for w in x.warnings]
    if warns:
        parts += ["", "warnings:"] + [f"  - {w}" for w in warns]
    return "\n".join(parts)


def write_joint_report(result: Any, iso: dict[str, Any], comparisons: list[dict[str, Any]], series: dict[str, Any],
                       out_dir: str | Path, source: str, command: str, skipped: int = 0) -> dict[str, Path]:
    """Write report.md, fit.json and the plots (surface, and IsoFLOP profiles when there are any) to ``out_dir``."""
    from lowrank_lm.stats.plots import plot_isoflop, plot_joint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "json": out / "fit.json"}
    data = result.to_json()
    data["isoflop"] = {k: v.to_json() for k, v in iso.items()}
    data["comparisons"] = comparisons
    write_json(data, paths["json"])
    if result.series:
        paths["plot_joint"] = out / "joint.png"
        plot_joint(result, series, paths["plot_joint"])
    if iso:
        paths["plot_isoflop"] = out / "isoflop.png"
        plot_isoflop(iso, paths["plot_isoflop"])
    s = result.settings
    md = [f"# Joint scaling fit: {source}", "", f"Command: `{command}`", "",
          f"{s.get('n_runs', sum(f.n_points for f in result.series.values()))} runs in "
          f"{s.get('n_series', len(result.series))} series"
          f"{f'; {skipped} unfinished row(s) skipped' if skipped else ''}. Model L(N, D) = E + A/N^alpha + B/D^beta "
          f"(N = {s.get('params', 'total')} parameters, D = training tokens), fitted per series on the mean log-loss "
          f"of each (N, D) cell with a Huber loss (delta {s['huber_delta']:g}) on log residuals from a grid of starts; "
          f"{s['n_bootstrap']} parametric bootstrap replicates, {s['level']:.0%} percentile intervals, "
          f"seed {s['seed']}.",
          "", _joint_noise_line(result) + ".", "", "## Joint law", "",
          _table_md(JOINT_HEADER, joint_rows(result)) if result.series else
          "No series could be fitted (the warnings below say why).", ""]
    if result.series:
        md += ["![loss vs N and vs D with the fitted surfaces](joint.png)", ""]
    if iso:
        md += ["## IsoFLOP profiles (approach 2)", "",
               "Per budget, a parabola in ln N through ln L of the sizes; its vertex is the loss-minimising size "
               "N* and D* the tokens that spend the budget on it. A vertex outside the sizes tried is an "
               "extrapolation.", "", _table_md(PROFILE_HEADER, profile_rows(iso)), "",
               "## Compute-optimal sizes N*(C), D*(C)", "",
               "Exponents of N* ~ C^a and D* ~ C^b, by least squares over the budgets (IsoFLOP) and from the fitted "
               "surface (joint law), with bootstrap intervals.", "", _table_md(LAW_HEADER, law_rows(iso)), "",
               "![IsoFLOP profiles and N*(C)](isoflop.png)", ""]
    if comparisons:
        md += ["## Between structures", "",
               "a − b of each exponent and the ratio of N* at each common budget, with intervals from paired "
               "replicates. A direction is stated only when the interval of the difference excludes 0 and the two "
               "intervals do not overlap; otherwise *not distinguishable*.", "", _joint_noise_line(result) + ".", "",
               "```",
               *optimum_comparison_lines(comparisons), "```", ""]
    warns = list(result.warnings) + [f"{n}: {w}" for n, f in result.series.items() for w in f.warnings]
    warns += [f"{n}: {w}" for n, x in iso.items() for w in x.warnings]
    if warns:
        md += ["## Warnings", ""] + [f"- {w}" for w in warns] + [""]
    md += ["## How to read this", "",
           "- alpha and beta say how fast the loss falls with parameters and with tokens; their ratio sets how a "
           "compute-optimal model grows: N* ~ C^(beta/(alpha+beta)) when FLOPs are proportional to N·D.",
           "- Intervals cover noise around the fitted surface (the residual scatter, or the measured seed-to-seed "
           "noise when larger). They do not cover a wrong functional form, other hyper-parameters, or the learning-"
           "rate schedule's dependence on the budget.", ""]
    write_text_atomic(paths["report"], "\n".join(md))
    return paths
