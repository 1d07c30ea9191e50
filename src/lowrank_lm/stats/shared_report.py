"""Rendering a shared-exponent fit (``fit --law shared``): the console table, report.md, fit.json and figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowrank_lm.atomic import write_text_atomic
from lowrank_lm.stats.fit import Series
from lowrank_lm.stats.report import POINT_COLUMNS, _table_md, _table_text, frontier_line, head_notes, noise_line
from lowrank_lm.stats.shared import SharedFit
from lowrank_lm.stats.table import write_csv, write_json

HEADER = ["series", "points", "compute multiplier k [CI]", "reading"]


def _num(v: float) -> str:
    """Three significant digits, never in exponent notation for the ordinary range of multipliers."""
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"


def reading(fit: SharedFit, name: str) -> str:
    """One sentence for people: what the multiplier says, and whether it is distinguishable from 1."""
    if name == fit.baseline:
        return "the baseline (k = 1)"
    k, ci = fit.multiplier(name), fit.k_ci.get(name)
    ci_text = f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else " (no interval)"
    text = f"{name}: worth {_num(k)}x{ci_text} the compute of {fit.baseline}"
    if k < 1:
        inv = f" [{_num(1 / ci[1])}, {_num(1 / ci[0])}]" if ci else ""
        text += f" (it needs {_num(1 / k)}x{inv} the FLOPs for the same loss)"
    if ci is None:
        return text
    if ci[0] > 1:
        return text + f"; better than {fit.baseline}"
    if ci[1] < 1:
        return text + f"; worse than {fit.baseline}"
    return text + f"; not distinguishable from {fit.baseline}"


def rows(fit: SharedFit) -> list[list[str]]:
    """One table row per series: its name, points, compute multiplier [interval] and what that reads as."""
    out = []
    for name in fit.names:
        ci = fit.k_ci.get(name)
        k = "1 (baseline)" if name == fit.baseline else _num(fit.multiplier(name)) + (
            f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")
        out.append([name, str(fit.n_points[name]), k, reading(fit, name)])
    return out


def curve_line(fit: SharedFit) -> str:
    """The shared curve's parameters with their intervals, and the residual scatter."""

    scale = min(fit.E + fit.A * fit.x_range[fit.baseline][1] ** -fit.alpha, 1e300)

    def num(v: float) -> str:
        # an E of 1e-15 is the solver's rendering of the bound 0; say 0 rather than print noise
        return "0" if abs(v) < 1e-6 * scale else f"{v:.3g}"

    def ci(v: tuple[float, float] | None) -> str:
        return "" if v is None else f" [{num(v[0])}, {num(v[1])}]"

    dof = f"{fit.dof} degrees of freedom" if fit.dof > 0 else "no residual degrees of freedom"
    e_note = " (at its bound 0: the points show no irreducible loss)" if num(fit.E) == "0" else ""
    return (f"shared curve: E {num(fit.E)}{ci(fit.E_ci)}{e_note}, A {fit.A:.3g}, alpha {fit.alpha:.3g}"
            f"{ci(fit.alpha_ci)}; "
            f"residual SE {fit.residual_se:.2%} of the loss ({dof})")


def consistency_line(fit: SharedFit) -> str:
    """The separate exponents beside the shared one, and the F test."""
    c = fit.consistency
    if not c:
        return "consistency with separate exponents: not checked"
    if c.get("note"):
        return f"consistency with separate exponents: {c['note']}"
    parts = []
    for name, s in c["series"].items():
        ci = s.get("alpha_ci")
        parts.append(f"{name} {s['alpha']:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""))
    line = f"separate exponents (one shared E): {', '.join(parts)}; shared {fit.alpha:.3g}"
    f = c.get("f_test")
    if f and f.get("p") is not None:
        verdict = "a shared exponent fits" if f["p"] >= 0.05 else "a shared exponent does NOT fit"
        line += f"; F test of separate vs shared exponents: F = {f['F']:.3g}, p = {f['p']:.2g} ({verdict})"
    return line


def format_shared_text(fit: SharedFit, source: str, skipped: int = 0) -> str:
    """The console summary of a shared-exponent fit."""
    s = fit.settings
    head = (f"shared-exponent fit of {source}: {sum(fit.n_points.values())} points in {len(fit.names)} series, "
            f"L = E + A (k C)^-alpha with x = {s.get('x', 'flops')}, baseline {fit.baseline}; "
            f"{s['n_bootstrap']} bootstrap replicates, {s['level']:.0%} intervals, seed {s['seed']}")
    head += head_notes(skipped, s)
    parts = [head, curve_line(fit), "", _table_text(HEADER, rows(fit)), "", consistency_line(fit), noise_line(s)]
    if fit.warnings:
        parts += ["", "warnings:"] + [f"  - {w}" for w in fit.warnings]
    return "\n".join(parts)


def write_shared_report(fit: SharedFit, series: dict[str, Series], points: list[dict[str, Any]],
                        out_dir: str | Path, source: str, command: str, skipped: int = 0) -> dict[str, Path]:
    """report.md, fit.json, points.csv and shared.png (every series collapsed onto the baseline's curve)."""
    from lowrank_lm.stats.plots import plot_shared

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "json": out / "fit.json", "points": out / "points.csv",
             "plot": out / "shared.png"}
    write_json(fit.to_json(), paths["json"])
    write_csv(points, paths["points"], POINT_COLUMNS)
    plot_shared(fit, series, paths["plot"], fit.settings.get("x", "flops"))
    frontier = frontier_line(fit.settings)
    md = [f"# Shared-exponent fit: {source}", "", f"Command: `{command}`", "",
          f"{sum(fit.n_points.values())} points in {len(fit.names)} series"
          f"{f' ({skipped} unfinished row(s) skipped)' if skipped else ''}. Model L = E + A·(k·C)^(-alpha): E, A "
          f"and alpha shared by every series, one compute multiplier k per series (k = 1 for {fit.baseline}), "
          f"least squares in log space; {fit.settings['n_bootstrap']} parametric bootstrap replicates, "
          f"{fit.settings['level']:.0%} percentile intervals."
          f"{f' {frontier}.' if frontier else ''}", "",
          curve_line(fit) + ".", "", "## Compute multipliers", "", _table_md(HEADER, rows(fit)), "",
          "A series with multiplier k reaches at C FLOPs the loss the baseline reaches at k·C FLOPs.", "",
          "## Is the exponent shared?", "", consistency_line(fit) + ".", "", noise_line(fit.settings) + ".", ""]
    if fit.warnings:
        md += ["## Warnings", ""] + [f"- {w}" for w in fit.warnings] + [""]
    md += ["## Figure", "", f"![every series collapsed onto the baseline's curve]({paths['plot'].name})", "",
           "Left: the points and each series' fitted curve. Right: every point moved to k·C, onto the "
           f"{fit.baseline} curve, with its {fit.settings['level']:.0%} bootstrap band.", ""]
    write_text_atomic(paths["report"], "\n".join(md))
    return paths

