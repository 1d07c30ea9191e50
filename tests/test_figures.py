"""Every figure of the project in its one style, checked by contents (not pixels): lines and bands, axis
scales, legend texts without folder paths, titles, no offset notation, tick labels that do not overlap, no
library warnings, and colours paired by budget across structures."""

from __future__ import annotations

import json
import math
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

import matplotlib.pyplot as plt
from matplotlib.colors import to_hex

from lowrank_lm import plotting
from lowrank_lm.layers import registry

from .test_compare import make_run


def drawn(make, *args, **kwargs):
    """The figure ``make`` returns, drawn (tick labels and offsets exist only then), with no warning raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = make(*args, **kwargs)
        fig.canvas.draw()
    assert [str(w.message) for w in caught] == []
    return fig


def tick_labels_overlap(fig) -> list[tuple[str, str]]:
    """Pairs of visible tick labels of one axis whose boxes intersect."""
    renderer = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
            bad += [(a, b) for (a, ba), (b, bb) in combinations(boxes, 2) if ba.overlaps(bb)]
    return bad


def check_style(fig) -> None:
    """What every panel of every figure must have: a title, no offset text, legends without folder paths, tick
    labels that do not overlap."""
    for ax in fig.axes:
        assert ax.get_title(), "a panel without a title"
        assert ax.xaxis.get_offset_text().get_text() == "" and ax.yaxis.get_offset_text().get_text() == ""
        legend = ax.get_legend()
        if legend is not None:
            texts = [t.get_text() for t in legend.get_texts()]
            assert texts and not [t for t in texts if "/" in t], texts
    assert tick_labels_overlap(fig) == []


def hexes(artists) -> list[str]:
    return [to_hex(a.get_color()) for a in artists]


def test_paired_colours_share_a_shade_per_budget_and_a_family_per_structure():
    keys = [("dense", 1e15), ("lowrank-32", 1e15), ("dense", 1e16), ("lowrank-32", 1e16)]
    c = plotting.paired_colours(keys, registry.colormaps())
    assert len({to_hex(x) for x in c}) == 4
    blues, oranges = plt.get_cmap("Blues"), plt.get_cmap("Oranges")
    assert to_hex(c[0]) == to_hex(blues(0.45)) and to_hex(c[2]) == to_hex(blues(0.95))  # small budget lighter
    assert to_hex(c[1]) == to_hex(oranges(0.45)) and to_hex(c[3]) == to_hex(oranges(0.95))
    # two series of one structure, or one key twice: a family each, never one colour for two lines
    two = plotting.paired_colours([("lowrank-32", None), ("lowrank-63", None), ("lowrank-32", None)],
                                  registry.colormaps())
    assert len({to_hex(x) for x in two}) == 3 and to_hex(two[0]) == to_hex(oranges(0.75))


def test_tick_labels_and_legend_labels_are_short():
    assert [plotting.compact_number(v) for v in (0.5, 20, 5000, 2e5, 1.5e15, 1e-4)] == \
        ["0.5", "20", "5000", "2e5", "1.5e15", "1e-4"]
    assert plotting.short_labels(["runs/a/dense", "runs/b/dense", "lowrank"]) == ["dense (a)", "dense (b)", "lowrank"]


def test_fit_figure(tmp_path):
    from lowrank_lm.stats.fit import FitOptions, Series, fit_all
    from lowrank_lm.stats.plots import fit_figure

    c = np.logspace(15, 19, 8)
    series = {name: Series(name, c, 2.0 + 2.0 * (c / c[0]) ** -a, np.zeros(8))
              for name, a in (("dense", 0.3), ("lowrank-32", 0.35))}
    result = fit_all(series, FitOptions(n_bootstrap=20))
    fig = drawn(fit_figure, result, series)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and "bootstrap bands" in ax.get_title()
    assert len(ax.lines) == 4 and len(ax.collections) == 2  # per series a curve, its points and its band
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.split(":")[0] for t in texts] == ["dense", "lowrank-32"]
    assert hexes(ax.lines[:2]) == [to_hex(plt.get_cmap("Blues")(0.75))] * 2
    check_style(fig)
    plt.close(fig)


def test_joint_figure_has_compact_log_ticks():
    """Sizes and token budgets within one decade: joint.png's minor tick labels once overlapped."""
    from lowrank_lm.stats.joint import JointOptions, JointSeries, fit_joint
    from lowrank_lm.stats.plots import joint_figure

    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(2e5, 9e5, 4), np.geomspace(1.5e5, 4.5e5, 3)))
    loss = 1.7 + 400 * N ** -0.34 + 400 * D ** -0.28
    series = {"dense": JointSeries("dense", N, D, loss)}
    result = fit_joint(series, JointOptions(n_bootstrap=0))
    fig = drawn(joint_figure, result, series)
    left, right = fig.axes
    assert left.get_xscale() == right.get_xscale() == "log"
    assert len(left.lines) == 2 * 3 and len(right.lines) == 2 * 4  # a slice and its runs per D, then per N
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["D = 1.5e5", "D = 2.6e5", "D = 4.5e5"]
    assert len(set(hexes(left.lines[::2]))) == 3  # one shade per slice
    assert not [t for t in left.xaxis.get_ticklabels(which="minor") if t.get_text()]
    check_style(fig)
    plt.close(fig)


def _iso(budgets=(1e12, 1e13)) -> dict:
    from lowrank_lm.stats.isoflop import analyse
    from lowrank_lm.stats.joint import series_from_rows

    rows = [{"series": name, "x": N, "params": N, "tokens": C / (6 * N), "flops": C, "budget": f"C{C:.0e}",
             "loss": 3.0 - 0.1 * math.log10(C) + shift + 0.2 * (np.log(N / (2e5 * C / 1e12))) ** 2,
             "loss_err": 0.0}
            for name, shift in (("dense", 0.0), ("lowrank-32", -0.02)) for C in budgets
            for N in np.array([0.25, 0.5, 1.0, 2.0, 4.0]) * 2e5 * C / 1e12]
    return analyse(series_from_rows(rows, "rows"), {}, None, 0, 0.95, 0)[0]


def test_isoflop_figure_pairs_budgets_and_has_no_empty_legend():
    from lowrank_lm.stats.plots import isoflop_figure

    fig = drawn(isoflop_figure, _iso())
    left, right = fig.axes
    assert left.get_xscale() == "log" and right.get_xscale() == right.get_yscale() == "log"
    texts = [t.get_text() for t in left.get_legend().get_texts()]
    assert [t.split()[0] for t in texts] == ["dense", "dense", "lowrank-32", "lowrank-32"]
    curves = hexes(left.get_legend_handles_labels()[0])
    blues, oranges = plt.get_cmap("Blues"), plt.get_cmap("Oranges")
    assert curves == [to_hex(blues(0.45)), to_hex(blues(0.95)), to_hex(oranges(0.45)), to_hex(oranges(0.95))]
    check_style(fig)
    plt.close(fig)
    one = drawn(isoflop_figure, _iso((1e12,)))  # one budget: no N*(C) law, so no legend box on the right
    assert one.axes[0].get_legend() is not None and one.axes[1].get_legend() is None
    plt.close(one)


def test_compare_figure_pairs_structures_and_strips_folders(tmp_path):
    from lowrank_lm.compare_plots import draw_groups
    from lowrank_lm.run_compare import find_runs
    from lowrank_lm.run_groups import compare_groups

    for sweep, dim in (("a", 64), ("b", 128)):  # one run name in two sweeps: labels once carried the folder path
        for name, params, loss in (("dense", 2_500_000, 5.0), ("lowrank", 1_500_000, 5.1)):
            run = make_run(tmp_path / sweep / name, params, loss + dim / 1000)
            (run / "config.yaml").write_text(f"model: {{hidden_dim: {dim}}}\n")
    groups, _ = compare_groups(find_runs([str(tmp_path / "a"), str(tmp_path / "b")])[0])
    assert len(groups) == 4 and all("/" in g.label for g in groups)
    fig = drawn(draw_groups, groups, "tokens", unigram=6.5)
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.split(" (")[0] + " " + t.split(" (")[1][0] for t in texts[:4]] == ["dense a", "dense b", "lowrank a",
                                                                                 "lowrank b"]  # by loss
    assert texts[-1] == "unigram baseline (6.500)"
    assert len(ax.lines) == 3 * 4 + 1 and len(ax.collections) == 0  # one seed each: no bands
    assert ax.lines[-1].get_ydata()[0] == 6.5
    smooth = dict(zip(texts, hexes(ax.get_legend_handles_labels()[0])))
    blues, oranges = plt.get_cmap("Blues"), plt.get_cmap("Oranges")
    for sweep, shade in (("a", 0.45), ("b", 0.95)):  # dense and lowrank of one shape share a shade
        assert smooth[next(t for t in texts if t.startswith(f"dense ({sweep})"))] == to_hex(blues(shade))
        assert smooth[next(t for t in texts if t.startswith(f"lowrank ({sweep})"))] == to_hex(oranges(shade))
    check_style(fig)
    plt.close(fig)


def test_run_loss_figure_and_demo_plot(tmp_path):
    from lowrank_lm.demo import _plot
    from lowrank_lm.train.curves import write_run_plot

    for name, params in (("dense", 2_500_000), ("lowrank-32", 1_500_000)):
        run = make_run(tmp_path / name, params, 5.0)
        records = [{"step": s, "tokens": s * 512, "loss": 5 + 3.0 / s + 0.05 * math.sin(s)} for s in range(1, 201)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) +
                                           json.dumps({"tokens": 102400, "val_loss": 5.0}) + "\n")
    saved: dict[str, object] = {}
    real_save = plotting.save

    def keep(fig, path):
        fig.canvas.draw()
        saved[Path(path).parent.name] = fig
        check_style(fig)
        return real_save(fig, path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plotting.save, restore = keep, plotting.save
        try:
            assert write_run_plot(tmp_path / "dense") == tmp_path / "dense" / "loss.png"
            assert _plot(tmp_path, ["dense", "lowrank-32"], math.log(700.0)) == tmp_path / "loss.png"
        finally:
            plotting.save = restore
    assert [str(w.message) for w in caught] == []
    (run_ax,) = saved["dense"].axes
    assert run_ax.get_xscale() == "log"  # 512 to 102,400 tokens: two decades
    raw, smooth, _val = run_ax.lines
    assert raw.get_alpha() == plotting.RAW_ALPHA and smooth.get_alpha() is None
    assert np.std(np.diff(smooth.get_ydata()[100:])) < np.std(np.diff(raw.get_ydata()[100:]))
    (demo_ax,) = saved[tmp_path.name].axes
    texts = [t.get_text() for t in demo_ax.get_legend().get_texts()]
    assert texts == ["dense (val 5.000)", "lowrank-32 (val 5.000)", "unigram baseline (6.551)"]
    assert demo_ax.get_title().startswith("demo:")
    for fig in saved.values():
        plt.close(fig)


def test_coord_check_figure():
    from lowrank_lm.coord_check import Record, coord_figure

    records = [Record(layer, step, width, rms * width ** (0.5 * (layer == "logits")))
               for layer, rms in (("ffn", 1.0), ("logits", 0.1)) for step in (0, 1) for width in (32, 64, 128)]
    fig = drawn(coord_figure, records)
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["step 0", "step 1"]
    for ax in fig.axes:
        assert ax.get_xscale() == ax.get_yscale() == "log" and len(ax.lines) == 2
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["ffn", "logits"]
    check_style(fig)
    plt.close(fig)


def test_series_of_one_structure_share_its_family_in_shades():
    names = ["dense", "lowrank-63", "lowrank-32", "dense-gqa", "wide-lowrank", "btt-32"]
    c = {n: to_hex(v) for n, v in plotting.series_colours(names, registry.colormaps()).items()}
    oranges, blues = plt.get_cmap("Oranges"), plt.get_cmap("Blues")
    assert c["lowrank-63"] == to_hex(oranges(0.45)) and c["lowrank-32"] == to_hex(oranges(0.95))
    assert c["dense"] == to_hex(blues(0.45)) and c["dense-gqa"] == to_hex(blues(0.95))
    assert c["btt-32"] == to_hex(plt.get_cmap("Reds")(0.75))  # a known structure keeps its family
    assert len(set(c.values())) == len(names)


def test_shared_figure_in_the_style():
    from lowrank_lm.stats.fit import FitOptions
    from lowrank_lm.stats.plots import shared_figure
    from lowrank_lm.stats.shared import fit_shared

    from .test_scaling_shared import synthetic

    series = synthetic(3)
    fit = fit_shared(series, "dense", FitOptions(n_bootstrap=20), check=False)
    fig = drawn(shared_figure, fit, series)
    left, right = fig.axes
    assert left.get_xscale() == right.get_xscale() == "log"
    assert fig._suptitle.get_text().startswith("shared-exponent fit")
    expected = plotting.series_colours(fit.names, registry.colormaps())
    assert hexes(left.lines[1::2]) == [to_hex(v) for v in expected.values()]
    check_style(fig)
    plt.close(fig)


def _captured(monkeypatch) -> dict[str, object]:
    """Figures handed to plotting.save, by file name, drawn and checked for the style; nothing is written."""
    saved: dict[str, object] = {}

    def keep(fig, path):
        fig.canvas.draw()
        check_style(fig)
        saved[Path(path).name] = fig
        return Path(path)

    monkeypatch.setattr(plotting, "save", keep)
    return saved


def test_bench_figures_in_the_style(tmp_path, monkeypatch):
    from lowrank_lm.bench.decode import plot_decode
    from lowrank_lm.bench.ffn import plot_ffn
    from lowrank_lm.bench.train import plot_train

    saved = _captured(monkeypatch)
    ffn = [{"kind": kind, "fraction": frac, "width": w, "tokens": t, "premerge": pm, "params": w * w * 8 * scale,
            "median_ms": scale * w * t / 1e5 * (0.8 if pm else 1.0)}
           for kind, frac, scale in (("dense", 1.0, 1.0), ("lowrank", 0.32, 0.32), ("btt", 0.32, 0.3))
           for w in (256, 512, 1024) for t in (64, 512, 4096)
           for pm in ((False, True) if kind == "lowrank" and w == 1024 else (False,))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [p.name for p in plot_ffn(ffn, tmp_path)] == ["ffn-latency-vs-width.png", "ffn-latency-vs-params.png",
                                                             "ffn-latency-vs-tokens.png"]
        decode = [{"config": c, "premerge": pm, "decode": "static", "batch": b, "tokens_per_s": 100.0 * b,
                   "gen": 64, "dtype": "bf16"} for c, pm in (("dense", False), ("lowrank-32", False),
                                                           ("lowrank-32", True)) for b in (1, 4, 16)]
        assert [p.name for p in plot_decode(decode, tmp_path)] == ["decode-throughput.png"]
        train = [{"variant": v, "tokens_per_s": 1000.0 * (i + 1), "tokens_per_step": 4096,
                  "min_ms": 4096 / (1.1 * 1000 * (i + 1)) * 1e3, "max_ms": 4096 / (0.9 * 1000 * (i + 1)) * 1e3}
                 for i, v in enumerate(("eager", "compile", "compile +fused loss"))]
        assert [p.name for p in plot_train(train, tmp_path)] == ["train-throughput.png"]
    assert [str(w.message) for w in caught] == []

    families = registry.colormaps()
    (width,) = saved["ffn-latency-vs-width.png"].axes
    labels = [t.get_text() for t in width.get_legend().get_texts()]
    assert labels == ["dense", "lowrank 32%", "btt 32%"] and len(width.lines) == 3  # no pre-merge below w_max
    for line, kind in zip(width.lines, ("dense", "lowrank", "btt")):
        assert to_hex(line.get_color()) == to_hex(plt.get_cmap(families[kind])(0.75))
    (tokens,) = saved["ffn-latency-vs-tokens.png"].axes
    assert tokens.get_xscale() == tokens.get_yscale() == "log"
    styles = {t.get_text(): (line.get_linestyle(), to_hex(line.get_color()))
              for t, line in zip(tokens.get_legend().get_texts(), tokens.lines)}
    assert styles["lowrank 32% +pre-merge"] == ("--", styles["lowrank 32%"][1])  # the twin: dashed, same colour
    (params,) = saved["ffn-latency-vs-params.png"].axes
    # one point per structure at the widest width and most tokens: its FFN parameters (M) and latency
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in params.lines] == [
        ([1024 * 1024 * 8 * s / 1e6], [s * 1024 * 4096 / 1e5]) for s in (1.0, 0.32, 0.3)]
    (dec,) = saved["decode-throughput.png"].axes
    assert dec.get_xscale() == "log" and len(dec.lines) == 3
    assert [t.get_text() for t in dec.get_xticklabels() if t.get_visible()] == ["1", "4", "16"]  # the batches
    assert [t.get_text() for t in dec.get_legend().get_texts()] == ["dense (static)", "lowrank-32 (static)",
                                                                    "lowrank-32 +pre-merge (static)"]
    assert list(dec.lines[2].get_ydata()) == [100.0, 400.0, 1600.0]
    (bars,) = saved["train-throughput.png"].axes
    assert [p.get_width() for p in bars.patches] == [1000.0, 2000.0, 3000.0]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["eager", "compile", "compile +fused loss"]
    for fig in saved.values():
        plt.close(fig)
