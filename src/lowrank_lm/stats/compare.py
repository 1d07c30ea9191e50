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

from lowrank_lm.stats.bootstrap import quantile_interval
from lowrank_lm.stats.fit import FitResult, Series, SeriesFit

NOT_DISTINGUISHABLE = "not distinguishable"
CROSSING_FACTOR = 1e6
"""How far beyond the largest observed compute a meeting point is still looked for."""


def default_baseline(names: list[str]) -> str | None:
    """The series the others are measured against: one named after the registry's baseline structure
    (``dense``), else the first whose name starts with it."""
    from lowrank_lm.layers.registry import DENSE  # here, not at import time: this module stays free of torch

    for name in names:
        if name.lower() == DENSE:
            return name
    return next((n for n in names if n.lower().startswith(DENSE)), None)


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


# (JSON key prefix, label, point value, replicate samples, interval) of each measure of steepness
def _measures(f: SeriesFit) -> list[tuple[str, str, float | None, np.ndarray | None, Any]]:
    alpha_samples = f.samples[:, 2] if f.samples is not None else None
    return [("alpha", "alpha", f.alpha, alpha_samples, f.alpha_ci),
            ("slope", "log-log slope", f.slope, f.slope_samples, f.slope_ci),
            ("loss_per_decade", "loss per decade", f.loss_per_decade, f.per_decade_samples, f.loss_per_decade_ci)]


def gap_by_size(a: Series, b: Series, level: float) -> dict[str, Any] | None:
    """How the loss gap a - b between models of the same size changes per decade of b's compute.

    This is the paper's own reading of its figure ("the gap to dense shrinks with scale"). Pairing the
    points by size cancels what the two runs of one size share (recipe, learning rate, data order), so
    it can be sharper than comparing two separately fitted exponents. The interval is the ordinary
    least-squares t interval (n - 2 degrees of freedom). None without at least 3 sizes in common.
    """
    if a.sizes is None or b.sizes is None:
        return None
    la, lb, xb = dict(zip(a.sizes, a.loss)), dict(zip(b.sizes, b.loss)), dict(zip(b.sizes, b.x))
    common = sorted((s for s in a.sizes if s in lb), key=lambda s: xb[s])
    if len(common) < 3:
        return None
    from scipy.stats import t as student_t

    x = np.log10([xb[s] for s in common])
    gap = np.array([la[s] - lb[s] for s in common])
    slope, icpt = np.polyfit(x, gap, 1)
    dof = len(common) - 2
    rss = float(np.sum((gap - (icpt + slope * x)) ** 2))
    se = math.sqrt(rss / dof) / math.sqrt(float(np.sum((x - x.mean()) ** 2)))
    half = float(student_t.ppf(1 - (1 - level) / 2, dof)) * se
    lo, hi = float(slope - half), float(slope + half)
    if hi < 0:
        verdict = f"the gap to {b.name} shrinks with compute"
    elif lo > 0:
        verdict = f"the gap to {b.name} grows with compute"
    else:
        verdict = NOT_DISTINGUISHABLE
    return {"sizes": common, "gaps": [float(g) for g in gap], "per_decade": float(slope), "per_decade_ci": [lo, hi],
            "verdict": verdict}


def compare_pair(fa: SeriesFit, fb: SeriesFit, level: float, meet: bool,
                 points: dict[str, Series] | None = None) -> dict[str, Any]:
    """a - b for the exponent, the log-log slope and the loss per decade, each with interval and verdict.

    The exponent's keys are unprefixed (``alpha_diff``, ``verdict``, ``steeper``, ``intervals_overlap``);
    the others carry their name (``slope_verdict``, ``loss_per_decade_diff_ci``...).
    """
    row: dict[str, Any] = {"a": fa.name, "b": fb.name}
    notes: list[str] = []
    for (key, label, va, sa, ca), (_, _, vb, sb, cb) in zip(_measures(fa), _measures(fb)):
        assert va is not None and vb is not None
        diff = va - vb
        diff_ci = quantile_interval(sa - sb, level) if sa is not None and sb is not None else None
        overlap = _overlap(ca, cb)
        verdict, steeper, note = _verdict(fa.name, fb.name, diff, diff_ci, overlap, label)
        prefix = "" if key == "alpha" else f"{key}_"
        row.update({f"{key}_diff": diff, f"{key}_diff_ci": None if diff_ci is None else [diff_ci[0], diff_ci[1]],
                    f"{prefix}intervals_overlap": overlap, f"{prefix}verdict": verdict, f"{prefix}steeper": steeper})
        if note:
            notes.append(note)
    row["crossing"] = crossing(fa, fb, level) if meet else None
    pa, pb = (points or {}).get(fa.name), (points or {}).get(fb.name)
    row["gap_by_size"] = gap_by_size(pa, pb, level) if pa is not None and pb is not None else None
    row["notes"] = notes
    return row


def compare_all(result: FitResult, baseline: str | None = None, level: float | None = None,
                points: dict[str, Series] | None = None) -> list[dict[str, Any]]:
    """Every pair of fitted series (baseline pairs last, as a - baseline; otherwise the steeper series is a),
    with meeting points against the baseline and, given the ``points`` with sizes, the gap by size."""
    from lowrank_lm.stats.table import budget_of

    level = level if level is not None else result.settings.get("level", 0.95)
    names = [n for n, f in result.series.items() if f.fitted]
    base = baseline if baseline is not None else default_baseline(names)
    # with series split by token budget (dense@t2M), each budget's curve of the baseline is a baseline
    stem = base.split("@")[0] if base is not None else None
    bases = [n for n in names if n == base or (budget_of(n) is not None and n.split("@")[0] == stem)]
    ordered = [n for n in names if n not in bases] + bases
    out = []
    for i, na in enumerate(ordered):
        for nb in ordered[i + 1:]:
            if budget_of(na) != budget_of(nb):
                continue  # curves of different token budgets are not comparable pairwise
            fa, fb = result.series[na], result.series[nb]
            if nb not in bases and (fb.alpha or 0.0) > (fa.alpha or 0.0):
                fa, fb = fb, fa  # between two non-baseline series, a is the steeper one: a - b >= 0
            out.append(compare_pair(fa, fb, level, meet=nb in bases, points=points))
    return out
