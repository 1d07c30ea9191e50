"""Matplotlib helpers shared by every figure: a headless pyplot when matplotlib is installed, and distinct colours.

Low in the import layers so that the trainer (a run's loss curve) and the scaling figures draw alike without
importing each other.
"""

from __future__ import annotations

from typing import Any


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def distinct_colours(n: int) -> list[Any]:
    """``n`` colours, all different: tab20's ten dark hues first (neighbours differ in hue, not shade), then its
    ten light ones; beyond 20, evenly spaced hues of a cyclic map."""
    import matplotlib

    if n <= 20:
        tab20 = matplotlib.colormaps["tab20"]
        return [tab20(2 * i if i < 10 else 2 * (i - 10) + 1) for i in range(n)]
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]
