"""The parametric bootstrap every law here uses: noisy replicates of a fitted curve, and their intervals.

A replicate adds Gaussian log-space noise to the fitted values and is refitted. The noise scale of a
replicate is drawn from the sampling distribution of the estimated scale, s * sqrt(dof / chi2(dof)) (the
bootstrap analogue of a t rather than a z interval: wider when the scale rests on few degrees of freedom),
and never falls below a floor per point: its stated error, or the run-to-run noise of a mean of that many
seeds, itself drawn the same way from the pooled seed noise. Intervals are percentile intervals.
"""

from __future__ import annotations

import numpy as np


def chi_scale(rng: np.random.Generator, s: float, dof: int, size: int | None = None) -> np.ndarray | float:
    """Draws of a scale estimated as ``s`` on ``dof`` degrees of freedom: s * sqrt(dof / chi2(dof)).

    ``size`` None draws one float; a number draws an array (the same draws as that many single calls).
    """
    if size is None:
        return float(s * np.sqrt(dof / rng.chisquare(dof)))
    return s * np.sqrt(dof / rng.chisquare(dof, size=size))


def noise_scales(rng: np.random.Generator, replicates: int, s: float, dof: int, floor: np.ndarray,
                 seed_sd: float = 0.0, seed_dof: int = 0, count: np.ndarray | None = None) -> np.ndarray:
    """Per-replicate, per-point noise of a parametric bootstrap: shape (replicates, points).

    The residual scale ``s`` is drawn per replicate (zero without degrees of freedom) and never falls below
    the point's ``floor``. With a pooled seed noise (``seed_sd`` on ``seed_dof`` degrees of freedom), a second
    floor is drawn per replicate after the residual scales: that noise over sqrt(``count``), the seeds
    averaged in each point.
    """
    scale = chi_scale(rng, s, dof, replicates) if dof > 0 else np.zeros(replicates)
    sig = np.maximum(np.asarray(scale)[:, None], np.asarray(floor, float)[None, :])
    if seed_dof > 0:
        assert count is not None, "a seed-noise floor needs the number of seeds of each point"
        seed = np.asarray(chi_scale(rng, seed_sd, seed_dof, replicates))
        sig = np.maximum(sig, seed[:, None] / np.sqrt(count)[None, :])
    return sig


def perturb(rng: np.random.Generator, centre: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``centre`` plus Gaussian noise of the given scales (one row per replicate)."""
    return centre[None, :] + rng.standard_normal(scales.shape) * scales


def replicates(rng: np.random.Generator, centre: np.ndarray, n: int, s: float, dof: int, floor: np.ndarray,
               seed_sd: float = 0.0, seed_dof: int = 0, count: np.ndarray | None = None) -> np.ndarray:
    """``n`` noisy copies of the fitted values ``centre`` (scales drawn first, then the noise): (n, points)."""
    return perturb(rng, centre, noise_scales(rng, n, s, dof, floor, seed_sd, seed_dof, count))


def note_failed_refits(samples: np.ndarray, warnings: list[str]) -> None:
    """Append to ``warnings`` the note that more than 5% of the bootstrap refits failed (rows whose first value is
    NaN); nothing when fewer did."""
    failed, total = int(np.isnan(samples[:, 0]).sum()), len(samples)
    if failed > 0.05 * total:
        warnings.append(f"{failed} of {total} bootstrap refits failed; the intervals rest on the rest")


def quantile_interval(samples: np.ndarray, level: float) -> tuple[float, float] | None:
    """The central ``level`` interval of the finite bootstrap samples; None with fewer than 10 of them."""
    ok = samples[np.isfinite(samples)]
    if len(ok) < 10:
        return None
    q = (1 - level) / 2
    lo, hi = np.quantile(ok, [q, 1 - q])
    return float(lo), float(hi)
