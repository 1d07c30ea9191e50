"""The one plotting style of every figure of the project, and the matplotlib helpers that carry it.

A figure writer draws inside :func:`style` (or is decorated with :func:`styled`), takes its colours from
:func:`paired_colours` / :func:`series_colours`, draws training losses with :func:`training_curve`, and ends
every panel with :func:`finish` (labels, title, grid, a legend only when something is labelled, log axes whose
tick labels cannot overlap, no offset notation) and the figure with :func:`save`.

Colours: one colour family per structure (each structure module declares its colormap; callers pass
``registry.colormaps()``), and within a family one shade per
budget or size, the same shade for the same budget in every family, so that dense and lowrank of one budget
read as a pair. Low in the import layers so that the trainer (a run's loss curve), compare, the scaling
figures, the demo and coord-check draw alike without importing each other.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lowrank_lm.atomic import atomic_open

STYLE: dict[str, Any] = {
    "figure.dpi": 150,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "axes.grid.which": "both",
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.formatter.useoffset": False,  # "+6.5" above an axis reads as a misprint in a paper
    "legend.frameon": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 5,
}
"""rcParams of every figure: readable at column width, light grid, no offset notation, frameless legends."""

SPARE_FAMILIES = ("PuRd", "BuGn", "Greys", "RdPu", "GnBu", "OrRd")
"""Families for series of other structures, or a second series of one structure (lowrank-32 next to lowrank-63)."""

RAW_ALPHA = 0.25
"""Opacity of the raw (unsmoothed) training loss drawn under its EMA."""
EMA_SPAN = 20
"""The smoothing averages over about 1/EMA_SPAN of a curve's logged points (none for 20 points or fewer)."""
EMA_RELATIVE = 0.1
"""...and over at most about a tenth of the points before the current one (a constant width on a log axis)."""

F = TypeVar("F", bound=Callable[..., Any])


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


@contextmanager
def style() -> Iterator[Any]:
    """Draw inside this: pyplot (Agg) with the project's rcParams; None (and no style) without matplotlib, for
    writers that skip their figure then."""
    plt = pyplot()
    if plt is None:
        yield None
        return
    with plt.rc_context(STYLE):
        yield plt


def styled(fn: F) -> F:
    """A figure function drawn inside :func:`style`: text sizes and formatters are read when artists are made."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def distinct_colours(n: int) -> list[Any]:
    """``n`` colours, all different, for lines that are not structures (coord-check's layers): tab10's hues
    first, then tab20's light ones; beyond 20, evenly spaced hues of a cyclic map."""
    import matplotlib

    if n <= 20:
        tab20 = matplotlib.colormaps["tab20"]
        return [tab20(2 * i if i < 10 else 2 * (i - 10) + 1) for i in range(n)]
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


def structure_of(name: str) -> str:
    """The structure a series or run name starts with: ``lowrank-32-t150k`` -> ``lowrank``."""
    m = re.match(r"[A-Za-z_]+", Path(name).name)
    return m.group(0).lower() if m else name


def _family_maps(names: list[str], families: Mapping[str, str] | None) -> dict[str, str]:
    """A colormap per family name: a known structure's own (``families``: structure -> colormap, the registry's
    declarations) for the first family of that structure; the others take the spares, then the known families no
    series here uses, in order."""
    known = dict(families or {})
    out: dict[str, str] = {}
    for fam in names:
        cmap = known.get(structure_of(fam))
        if cmap is not None and cmap not in out.values():
            out[fam] = cmap
    free = [c for c in (*SPARE_FAMILIES, *known.values()) if c not in out.values()] or list(SPARE_FAMILIES)
    for i, fam in enumerate(f for f in names if f not in out):
        out[fam] = free[i % len(free)]
    return out


def _level_order(levels: list[Any]) -> list[Any]:
    """Distinct levels, small to large when they are numbers, else in order of appearance."""
    distinct = list(dict.fromkeys(levels))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct):
        return sorted(distinct)
    return distinct


def paired_colours(keys: Sequence[tuple[str, Any]], families: Mapping[str, str] | None = None) -> list[Any]:
    """One colour per ``(family, level)`` key, in order: the family (a structure or series name) picks the hue,
    the level (budget, size, slice) the shade, light to dark, ranked over all keys so that one level has one
    shade in every family. A repeated key gets a family of its own (two lowrank series at one budget)."""
    import matplotlib

    seen: dict[tuple[str, Any], int] = {}
    resolved = []
    for fam, level in keys:
        k = seen.get((fam, level), 0)
        seen[(fam, level)] = k + 1
        resolved.append((fam if k == 0 else f"{fam}#{k}", level))
    maps = _family_maps(list(dict.fromkeys(f for f, _ in resolved)), families)
    order = _level_order([lv for _, lv in resolved])
    n = len(order)
    out = []
    for fam, level in resolved:
        shade = 0.75 if n == 1 else 0.45 + 0.5 * order.index(level) / (n - 1)
        out.append(matplotlib.colormaps[maps[fam]](shade))
    return out


def series_colours(names: Sequence[str], families: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One colour per series: a family per structure (``lowrank-63`` and ``lowrank-32`` are both lowrank),
    one shade per series of that structure (one series: a middle shade)."""
    import matplotlib

    by_structure: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        by_structure.setdefault(structure_of(name), []).append(name)
    maps = _family_maps(list(by_structure), families)
    out = {}
    for struct, members in by_structure.items():
        shades = [0.75] if len(members) == 1 else np.linspace(0.45, 0.95, len(members))
        for name, shade in zip(members, shades):
            out[name] = matplotlib.colormaps[maps[struct]](float(shade))
    return out


LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


def series_styles(names: Sequence[str], families: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per series ``color``, ``linestyle`` and ``marker``: the colour of :func:`series_colours`, and the line
    style and marker of its place among the series of its structure, so shades of one family stay apart."""
    colours = series_colours(names, families)
    seen: dict[str, int] = {}
    out = {}
    for name in colours:
        k = seen.get(structure_of(name), 0)
        seen[structure_of(name)] = k + 1
        out[name] = {"color": colours[name], "linestyle": LINESTYLES[k % len(LINESTYLES)],
                     "marker": MARKERS[k % len(MARKERS)]}
    return out


def short_labels(labels: Sequence[str]) -> list[str]:
    """Legend texts without folder paths: a path's last part, ``name (parent)`` where names repeat."""
    names = [Path(lb).name if "/" in lb else lb for lb in labels]
    out = []
    for lb, name in zip(labels, names):
        if names.count(name) > 1 and "/" in lb:
            name = f"{name} ({Path(lb).parent.name})"
        out.append(name)
    return out


def ema(y: np.ndarray, weight: float | None = None) -> np.ndarray:
    """Exponential moving average with bias correction (the first points are not pulled towards 0). The
    default weight scales with the curve's length, so a short curve is not dragged behind its own points, and
    the window at point i is at most about EMA_RELATIVE * i points, so the steep start of a curve (wide on a
    log axis) is not dragged behind either."""
    if weight is None:
        weight = max(0.0, 1.0 - EMA_SPAN / max(len(y), 1))
    out = np.empty(len(y))
    acc, norm = 0.0, 0.0
    for i, v in enumerate(y):
        w = min(weight, EMA_RELATIVE * i / (EMA_RELATIVE * i + 1))
        acc = w * acc + (1 - w) * v
        norm = w * norm + (1 - w)
        out[i] = acc / norm
    return out


def training_curve(ax: Any, x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, colour: Any,
                   label: str | None) -> np.ndarray:
    """The raw training loss faint and its EMA on top (labelled); returns the smoothed values."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    ax.plot(xs, ys, color=colour, lw=0.6, alpha=RAW_ALPHA)
    smooth = ema(ys)
    ax.plot(xs, smooth, color=colour, lw=1.5, label=label)
    return smooth


def unigram_line(ax: Any, loss: float | None) -> None:
    """The unigram baseline (what knowing only token frequencies gives) as a labelled horizontal line."""
    if loss is not None and math.isfinite(loss):
        ax.axhline(loss, color="0.35", ls="--", lw=1.0, label=f"unigram baseline ({loss:.3f})")


def spans_decades(values: Sequence[float], factor: float = 10.0) -> bool:
    """True when positive ``values`` span ``factor`` or more: an axis that wants a log scale."""
    v = [float(x) for x in values if x > 0]
    return bool(v) and max(v) / min(v) >= factor


def compact_number(v: float) -> str:
    """A short tick label: 0.5, 20, 5000, 2e5, 1.5e15 (never mathtext, which is wide and overlaps)."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    if 1e-2 <= abs(v) < 1e4:
        return f"{v:.4g}"
    e = math.floor(math.log10(abs(v)))
    m = round(v / 10**e, 2)
    if abs(m) >= 10:
        m, e = m / 10, e + 1
    return f"{m:g}e{e}"


def _tidy_log_axis(axis: Any, lo: float, hi: float) -> None:
    """Ticks a reader can tell apart: decades over a wide range, 1-2-5 over one or two decades, every digit
    over less; labels compact, and no minor labels (matplotlib's minor labels were what overlapped)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    subs: tuple[float, ...] = (1.0,) if decades > 2.5 else (1.0, 2.0, 5.0) if decades > 0.6 else \
        tuple(float(s) for s in range(1, 10))
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: compact_number(v)))
    axis.set_minor_formatter(NullFormatter())


def ticks_at(axis: Any, values: Sequence[float]) -> None:
    """Major ticks at exactly these values (a handful of measured points such as batch sizes 256 and 512, which
    decade ticks would not mark), labelled compactly, no minor labels. Call after :func:`finish`."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis.set_major_locator(FixedLocator(sorted(set(values))))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: compact_number(v)))
    axis.set_minor_formatter(NullFormatter())


def finish(ax: Any, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
           legend: bool = True, legend_loc: str = "best") -> None:
    """End a panel: labels, title, a legend only when something is labelled (no empty box, no warning), log
    axes with compact non-overlapping ticks, linear axes without offset notation. Call after drawing."""
    from matplotlib.ticker import ScalarFormatter

    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() == "log":
            _tidy_log_axis(axis, min(lim), max(lim))
        elif isinstance(axis.get_major_formatter(), ScalarFormatter):
            axis.get_major_formatter().set_useOffset(False)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc=legend_loc)


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, a temporary file renamed: a link at path is replaced) and close it."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as f:
        fig.savefig(f, format="png", dpi=STYLE["savefig.dpi"])
    plt.close(fig)
    return out
