"""The joint law's bootstrap refits with its batched Levenberg-Marquardt solver and with scipy alone.

    python scripts/joint_solvers.py docs/results/scaling-cpu-isoflop/results.csv --bootstrap 1000

Fits every series of a results table as ``lowrank-lm fit RESULTS --law joint`` does, once with the batched
solver (``joint._Problem.solve_many``) and once with scipy's ``least_squares`` refitting each replicate from
the point estimate (``joint._Problem.solve``), on the same replicates; prints the wall time of each fit and,
per series, how the final Huber costs compare replicate by replicate and how many refits each gave up on.
It is the measurement behind keeping the batched solver (docs/scaling.md, "Intervals" of the joint law).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from lowrank_lm.stats import joint
from lowrank_lm.stats.table import read_points

BATCHED = joint._Problem.solve_many


def scipy_refits(self: joint._Problem, Y: np.ndarray, p0: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Every replicate refitted by scipy alone (``iterations`` unused: scipy stops at its own max_nfev)."""
    out = np.full((len(Y), 5), np.nan)
    for r in range(len(Y)):
        res = self.solve(Y[r], [p0])
        if res is not None:
            out[r] = res.x
    return out


def costs(prob: joint._Problem, P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """The Huber cost of each row's refit at its replicate (inf where the refit failed)."""
    ok = np.isfinite(P).all(axis=1)
    out = np.full(len(Y), np.inf)
    out[ok] = [prob.objective(P[r:r + 1], Y[r])[0] for r in np.flatnonzero(ok)]
    return out


def compare(self: joint._Problem, Y: np.ndarray, p0: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Both solvers on the same replicates; prints how their final costs compare; returns the batched refits."""
    batched, alone = BATCHED(self, Y, p0, iterations), scipy_refits(self, Y, p0)
    cb, cs = costs(self, batched, Y), costs(self, alone, Y)
    both = np.isfinite(cb) & np.isfinite(cs)
    rel = (cb[both] - cs[both]) / np.maximum(cs[both], 1e-300)
    print(f"  {len(Y)} replicates: same cost (within 1e-6) {np.sum(np.abs(rel) <= 1e-6)}, batched lower "
          f"{np.sum(rel < -1e-6)}, scipy lower {np.sum(rel > 1e-6)}; gave up: batched {np.sum(~np.isfinite(cb))}, "
          f"scipy {np.sum(~np.isfinite(cs))}")
    return batched


def timed(solver: Any, series: dict[str, joint.JointSeries], replicates: int) -> float:
    """Seconds of one ``fit_joint`` with ``solver`` doing the bootstrap refits."""
    joint._Problem.solve_many = solver  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        joint.fit_joint(series, joint.JointOptions(n_bootstrap=replicates), skip_unfit=True)
        return time.perf_counter() - start
    finally:
        joint._Problem.solve_many = BATCHED  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a results CSV of a sweep with sizes x budgets")
    parser.add_argument("--bootstrap", type=int, default=1000, help="replicates (fit's default: 1000)")
    args = parser.parse_args()
    rows, _ = read_points(args.results, joint.N_COLUMNS["total"])
    series = joint.series_from_rows(rows, args.results)
    print(f"batched solver: {timed(BATCHED, series, args.bootstrap):.1f} s")
    print(f"scipy alone:    {timed(scipy_refits, series, args.bootstrap):.1f} s")
    print("per series, on the same replicates:")
    timed(compare, series, args.bootstrap)


if __name__ == "__main__":
    main()
