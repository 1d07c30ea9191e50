"""The one solver of every law here: scipy's bounded least squares run from several starts."""

from __future__ import annotations

from typing import Any

import numpy as np


def multistart(residual: Any, jac: Any, starts: Any, bounds: tuple[np.ndarray, np.ndarray],
               accept_unconverged: bool = False, **options: Any) -> Any:
    """scipy's bounded trust-region least squares from each start; the lowest cost wins (None if all failed).

    The fits here have long valleys (E trades off against A and alpha), where one start can stop in the
    wrong place, so every law runs its solver from a few starts. Starts are moved strictly inside the box
    (the trust-region solver wants an interior start); ``options`` go to ``least_squares`` (loss, tolerances).
    ``accept_unconverged`` also accepts a run that stopped at ``max_nfev`` (still crawling along a flat
    valley, where the cost barely changes), for fits whose reported quantity does not move along that valley.
    """
    from scipy.optimize import least_squares  # here, not at import time: `lowrank-lm --help` stays fast

    lo, hi = bounds
    best = None
    for p0 in starts:
        p0 = np.clip(p0, lo + 1e-9 * (1 + abs(lo)), hi - 1e-9 * (1 + abs(hi)))
        try:
            # a trial step far out can overflow exp(); the solver rejects such steps, so no warning is due
            with np.errstate(over="ignore", invalid="ignore"):
                res = least_squares(residual, p0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac", **options)
        except (ValueError, np.linalg.LinAlgError):
            continue
        ok = res.status > 0 or (accept_unconverged and res.status == 0)
        if ok and np.isfinite(res.cost) and (best is None or res.cost < best.cost):
            best = res
    return best
