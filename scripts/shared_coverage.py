"""Coverage of the shared-exponent fit's intervals: how often the 95% interval of each compute multiplier
holds the true multiplier, over repeats of synthetic data with known multipliers.

    python scripts/shared_coverage.py --repeats 200 --bootstrap 300

Each repeat draws losses L = E + A (k C)^-alpha with Gaussian log-space noise (three series, six compute
values over three decades, the design of tests/test_scaling_shared.py), fits them with ``fit_shared`` and
records whether each interval covers the truth and the largest relative error of a multiplier.
"""

from __future__ import annotations

import argparse

import numpy as np

from lowrank_lm.stats.fit import FitOptions, Series
from lowrank_lm.stats.shared import fit_shared

TRUTH = {"dense": 1.0, "lowrank-32": 1.25, "blockdense-32": 0.8}
E, A, ALPHA, NOISE = 2.0, 5e4, 0.3, 0.002


def synthetic(rng: np.random.Generator, points: int = 6) -> dict[str, Series]:
    """Three series on one curve, shifted by their true multipliers, with log-space noise NOISE."""
    x = np.logspace(15, 18, points)
    out = {}
    for name, k in TRUTH.items():
        loss = (E + A * (k * x) ** -ALPHA) * np.exp(rng.normal(0.0, NOISE, points))
        out[name] = Series(name, x, loss, np.zeros(points))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--bootstrap", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    covered = {n: 0 for n in TRUTH if n != "dense"}
    worst = []
    for r in range(args.repeats):
        fit = fit_shared(synthetic(rng), "dense", FitOptions(n_bootstrap=args.bootstrap, seed=r), check=False)
        for name in covered:
            lo, hi = fit.k_ci[name]  # type: ignore[misc]
            covered[name] += int(lo <= TRUTH[name] <= hi)
        worst.append(max(abs(fit.multiplier(n) / TRUTH[n] - 1) for n in covered))
    for name, hits in covered.items():
        print(f"{name}: 95% interval covers the true multiplier {TRUTH[name]} in {hits}/{args.repeats} "
              f"repeats ({hits / args.repeats:.1%})")
    print(f"largest relative error of a multiplier: median {np.median(worst):.2%}, 95th percentile "
          f"{np.quantile(worst, 0.95):.2%}, max {max(worst):.2%}")


if __name__ == "__main__":
    main()
