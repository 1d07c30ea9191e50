"""Comparisons between fitted series: exponent and slope differences, and where two curves meet.

Differences use the bootstrap replicates pair by pair. Series fitted together (a shared E) come from
the same draws, so their difference keeps the correlation the shared E induces; series fitted apart
come from independent draws, and pairing replicate i with replicate i is then a valid sample of the
difference as well.

A difference is called a direction ("X steeper than Y") only when its interval excludes zero **and**
the two series' own intervals do not overlap. Otherwise the verdict is "not distinguishable", with a
note when the difference interval alone excludes zero (weak evidence, stated as such).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lowrank_lm.scaling.fit import FitResult, SeriesFit, _interval

NOT_DISTINGUISHABLE = "not distinguishable"
CROSSING_FACTOR = 1e6
"""How far beyond the largest observed compute a meeting point is still looked for."""


def default_baseline(names: list[str]) -> str | None:
    """The series the others are measured against: one named ``dense``, else the first starting with it."""
    for name in names:
        if name.lower() == "dense":
            return name
    return next((n for n in names if n.lower().startswith("dense")), None)


def _overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def _verdict(name_a: str, name_b: str, diff: float, diff_ci: tuple[float, float] | None,
             overlap: bool | None, what: str) -> tuple[str, str | None, str | None]:
    """(verdict, the steeper series or None, a note) for a difference a - b of exponents or slopes."""
    if diff_ci is None:
        return NOT_DISTINGUISHABLE, None, f"no interval for the {what} difference"
    excludes_zero = diff_ci[0] > 0 or diff_ci[1] < 0
    steeper, flatter = (name_a, name_b) if diff > 0 else (name_b, name_a)
    if excludes_zero and overlap is False:
        return f"{steeper} steeper than {flatter}", steeper, None
    if excludes_zero:
        return (NOT_DISTINGUISHABLE, None,
                f"the {what} difference interval excludes 0 but the two intervals overlap: weak evidence that "
                f"{steeper} is steeper")
    return NOT_DISTINGUISHABLE, None, None


def _curves(samples: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Loss of every replicate (failed ones stay NaN) at ``x``: shape (replicates, len(x))."""
    return samples[:, :1] + np.exp(samples[:, 1:2] - samples[:, 2:3] * np.log(x)[None, :])


def _first_crossing(d: np.ndarray, logx: np.ndarray) -> float:
    """log x of the first sign change of d along the grid (linear interpolation), or +inf."""
    s = np.sign(d)
    change = np.nonzero(s[1:] * s[:-1] < 0)[0]
    if len(change) == 0:
        return math.inf
    i = int(change[0])
    t = d[i] / (d[i] - d[i + 1])
    return float(logx[i] + t * (logx[i + 1] - logx[i]))


def crossing(a: SeriesFit, b: SeriesFit, level: float, factor: float = CROSSING_FACTOR) -> dict[str, Any]:
    """Where the fitted curves of ``a`` and ``b`` first meet, between the smallest observed compute and
    ``factor`` x the largest, with a bootstrap interval (replicates that never meet count as +inf)."""
    lo, top = min(a.x_min, b.x_min), max(a.x_max, b.x_max)
    both = min(a.x_max, b.x_max)  # beyond this, at least one curve is extrapolated
    hi = top * factor
    grid = np.logspace(math.log10(lo), math.log10(hi), 1201)
    logx = np.log10(grid)
    point = _first_crossing(a.predict(grid) - b.predict(grid), logx)
    out: dict[str, Any] = {"at": None, "ci": None, "share_of_replicates": None, "extrapolated": None,
                           "lower_after": None, "searched_up_to": hi}
    if a.samples is not None and b.samples is not None:
        diff = _curves(a.samples, grid) - _curves(b.samples, grid)
        ok = np.isfinite(diff).all(axis=1)
        meets = np.array([_first_crossing(row, logx) for row in diff[ok]])
        if len(meets):
            out["share_of_replicates"] = float(np.mean(np.isfinite(meets)))
            beyond = logx[-1] + 1.0  # "never met" sorts above every real meeting point
            q = (1 - level) / 2
            qs = np.quantile(np.where(np.isfinite(meets), meets, beyond), [q, 1 - q])
            out["ci"] = [float(10 ** v) if v <= logx[-1] else None for v in qs]
    if math.isfinite(point):
        at = 10 ** point
        probe = np.array([at * 1.01])
        out.update(at=float(at), extrapolated=bool(at > both),
                   lower_after=a.name if a.predict(probe)[0] < b.predict(probe)[0] else b.name)
        short = a.name if a.x_max <= b.x_max else b.name
        out["note"] = (f"the fitted curves meet at {at:.3g}, {at / both:.3g} x the largest compute of {short} "
                       "(an extrapolation)" if at > both else f"the fitted curves meet inside the data, at {at:.3g}")
    else:
        out["note"] = f"the fitted curves do not meet below {hi:.3g} ({factor:.0e} x the largest observed compute)"
    return out


def compare_all(result: FitResult, baseline: str | None = None, level: float | None = None) -> list[dict[str, Any]]:
    """Every pair of fitted series: exponent and slope differences with verdicts; meeting points vs baseline."""
    level = level if level is not None else result.settings.get("level", 0.95)
    names = [n for n, f in result.series.items() if f.fitted]
    base = baseline if baseline is not None else default_baseline(names)
    # the baseline always second, so "a - b" reads "this series minus the baseline"
    ordered = ([n for n in names if n != base] + [base]) if base in names else names
    out = []
    for i, na in enumerate(ordered):
        for nb in ordered[i + 1:]:
            fa, fb = result.series[na], result.series[nb]
            if nb != base and (fb.alpha or 0.0) > (fa.alpha or 0.0):
                fa, fb = fb, fa  # between two non-baseline series, a is the steeper one: a - b >= 0
            assert fa.alpha is not None and fb.alpha is not None
            na_, nb_ = fa.name, fb.name
            row: dict[str, Any] = {"a": na_, "b": nb_, "alpha_diff": fa.alpha - fb.alpha, "alpha_diff_ci": None}
            if fa.samples is not None and fb.samples is not None:
                row["alpha_diff_ci"] = _interval(fa.samples[:, 2] - fb.samples[:, 2], level)
            overlap = _overlap(fa.alpha_ci, fb.alpha_ci)
            verdict, steeper, note = _verdict(na_, nb_, row["alpha_diff"], row["alpha_diff_ci"], overlap, "alpha")
            row.update(intervals_overlap=overlap, verdict=verdict, steeper=steeper)
            notes = [note] if note else []
            assert fa.slope is not None and fb.slope is not None
            row["slope_diff"] = fa.slope - fb.slope
            row["slope_diff_ci"] = None
            if fa.slope_samples is not None and fb.slope_samples is not None:
                row["slope_diff_ci"] = _interval(fa.slope_samples - fb.slope_samples, level)
            s_overlap = _overlap(fa.slope_ci, fb.slope_ci)
            s_verdict, s_steeper, s_note = _verdict(na_, nb_, row["slope_diff"], row["slope_diff_ci"], s_overlap,
                                                    "slope")
            row.update(slope_intervals_overlap=s_overlap, slope_verdict=s_verdict, slope_steeper=s_steeper)
            if s_note:
                notes.append(s_note)
            row["crossing"] = crossing(fa, fb, level) if nb == base else None
            row["notes"] = notes
            for key in ("alpha_diff_ci", "slope_diff_ci"):
                if row[key] is not None:
                    row[key] = [float(row[key][0]), float(row[key][1])]
            out.append(row)
    return out
