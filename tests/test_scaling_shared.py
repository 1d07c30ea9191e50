"""`fit --law shared`: compute multipliers recovered from synthetic series with known multipliers, intervals that
cover them, the consistency warning, the CLI contract and the collapsed figure."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lowrank_lm.stats.fit import FitOptions, Series
from lowrank_lm.stats.shared import fit_shared

from .ecosystem import cli

pytest.importorskip("scipy")

TRUTH = {"dense": 1.0, "lowrank-32": 1.25, "blockdense-32": 0.8}
E, A, ALPHA = 2.0, 5e4, 0.3


def synthetic(seed: int, noise: float = 0.002, alphas: dict[str, float] | None = None) -> dict[str, Series]:
    """Three series on L = E + A (k C)^-alpha (six compute values over three decades), log-normal noise."""
    rng = np.random.default_rng(seed)
    x = np.logspace(15, 18, 6)
    out = {}
    for name, k in TRUTH.items():
        alpha = (alphas or {}).get(name, ALPHA)
        scale = A * 1e15 ** (alpha - ALPHA)  # another exponent, the same reducible loss at the first compute
        loss = (E + scale * (k * x) ** -alpha) * np.exp(rng.normal(0.0, noise, len(x)))
        out[name] = Series(name, x, loss, np.zeros(len(x)))
    return out


def test_recovers_known_multipliers_within_5_percent():
    fit = fit_shared(synthetic(3), None, FitOptions(n_bootstrap=200))
    assert fit.baseline == "dense" and fit.names[0] == "dense"
    for name, k in TRUTH.items():
        assert fit.multiplier(name) == pytest.approx(k, rel=0.05)
    assert fit.alpha == pytest.approx(ALPHA, rel=0.15)
    lo, hi = fit.k_ci["lowrank-32"]
    assert lo < fit.multiplier("lowrank-32") < hi and lo > 1.0  # better than dense, and the interval says so
    assert fit.k_ci["blockdense-32"][1] < 1.0
    assert fit.consistency["f_test"]["p"] > 0.05 and not fit.warnings


def test_intervals_cover_the_truth_in_most_repeats():
    # scripts/shared_coverage.py measures it with 400 repeats (docs/scaling.md); a fast, loose bound here
    covered, total = 0, 0
    for seed in range(12):
        fit = fit_shared(synthetic(100 + seed), "dense", FitOptions(n_bootstrap=100, seed=seed), check=False)
        for name in ("lowrank-32", "blockdense-32"):
            lo, hi = fit.k_ci[name]
            covered += int(lo <= TRUTH[name] <= hi)
            total += 1
    assert covered >= 0.75 * total


def test_a_series_with_its_own_exponent_is_flagged():
    fit = fit_shared(synthetic(5, alphas={"lowrank-32": 0.45}), "dense", FitOptions(n_bootstrap=100))
    assert fit.consistency["f_test"]["p"] < 0.05
    assert any("a shared exponent does not fit" in w for w in fit.warnings)
    assert any(w.startswith("lowrank-32: its own exponent") for w in fit.warnings)


def test_one_point_series_gets_a_multiplier():
    series = synthetic(7)
    one = series["blockdense-32"]
    series["blockdense-32"] = Series("blockdense-32", one.x[3:4], one.loss[3:4], one.loss_err[3:4])
    fit = fit_shared(series, "dense", FitOptions(n_bootstrap=100))
    assert fit.n_points["blockdense-32"] == 1
    assert fit.multiplier("blockdense-32") == pytest.approx(0.8, rel=0.1)
    assert set(fit.consistency["series"]) == {"dense", "lowrank-32"}  # the lone point has no exponent of its own


def _write_table(path, seeds=(0, 1)) -> None:
    rng = np.random.default_rng(11)
    cols = ["name", "series", "size", "flops", "seed", "loss"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for name, k in TRUTH.items():
            for i, c in enumerate(np.logspace(15, 18, 5)):
                for seed in seeds:
                    loss = (E + A * (k * c) ** -ALPHA) * np.exp(rng.normal(0, 0.003))
                    w.writerow([f"{name}-s{i}-seed{seed}", name, f"s{i}", f"{c:.6g}", seed, f"{loss:.6f}"])


def test_cli_json_contract_report_and_figure(tmp_path):
    table = tmp_path / "results.csv"
    _write_table(table)
    code, out, err = cli("fit", str(table), "--law", "shared", "--baseline", "dense", "--bootstrap", "100", "--json",
                         "--report", str(tmp_path / "rep"))
    assert code == 0, err
    data = json.loads(out)
    assert data["baseline"] == "dense" and data["alpha"] == pytest.approx(ALPHA, rel=0.2)
    assert data["series"]["dense"]["compute_multiplier"] == 1.0 and data["series"]["dense"]["ci"] is None
    k = data["series"]["lowrank-32"]
    assert k["compute_multiplier"] == pytest.approx(1.25, rel=0.05) and k["ci"][0] < 1.25 < k["ci"][1]
    assert data["settings"]["seed_noise"]["dof"] == 15  # 15 points with two seeds each: the noise is measured
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == [".lowrank-lm-fit.json", "fit.json", "points.csv",
                                                                     "report.md", "shared.png"]
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "lowrank-32: worth 1.2" in report and "better than dense" in report
    code, text, _ = cli("fit", str(table), "--law", "shared", "--bootstrap", "50")
    assert "blockdense-32: worth 0.8" in text and "the FLOPs for the same loss" in text
    assert "run-to-run noise (seed to seed, pooled over 15 points" in text


def test_collapsed_figure_contents():
    from lowrank_lm.stats.plots import shared_figure

    series = synthetic(3)
    fit = fit_shared(series, "dense", FitOptions(n_bootstrap=50), check=False)
    fig = shared_figure(fit, series)
    left, right = fig.axes
    assert left.get_xscale() == right.get_xscale() == "log"
    assert len(left.lines) == 6  # a curve and the points of each series
    assert len(right.lines) == 4 and len(right.collections) == 1  # three point sets, the dense curve and its band
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert labels[0] == "dense" and labels[1].startswith("lowrank-32: k = 1.2") and "95% bootstrap band" in labels
    moved = right.lines[1].get_xdata()  # lowrank-32's points, moved to k x C
    assert np.allclose(moved, fit.multiplier("lowrank-32") * series["lowrank-32"].x)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_user_errors_are_one_line(tmp_path):
    table = tmp_path / "results.csv"
    _write_table(table, seeds=(0,))
    code, _, err = cli("fit", str(table), "--law", "shared", "--baseline", "nope")
    assert code == 2 and err.count("\n") == 1 and "--baseline nope: no such series" in err
    code, _, err = cli("fit", str(table), "--law", "shared", "--mode", "power")
    assert code == 2 and "--mode apply to the compute law only" in err
    code, _, err = cli("fit", str(table), "--law", "shared", "--series", "dense")
    assert code == 2 and "give at least one other series" in err


def test_paper_multipliers():
    code, out, err = cli("fit", "paper", "--law", "shared", "--series", "dense,lowrank-63,lowrank-32,blockdense-32",
                         "--bootstrap", "200", "--json")
    assert code == 0, err
    s = json.loads(out)["series"]
    k32, k63 = s["lowrank-32"]["compute_multiplier"], s["lowrank-63"]["compute_multiplier"]
    assert 0.7 < k32 < k63 < 1.0  # fewer parameters: less compute-efficient, as the figure shows
    assert s["lowrank-32"]["ci"][1] < 1.0 and s["lowrank-63"]["ci"][0] < 1.0 < s["lowrank-63"]["ci"][1]
    assert s["blockdense-32"]["n_points"] == 1 and s["blockdense-32"]["compute_multiplier"] < k32


def test_plan_reads_multipliers_with_intervals_and_bench_times(tmp_path):
    table = tmp_path / "results.csv"
    _write_table(table)
    code, out, err = cli("fit", str(table), "--law", "shared", "--bootstrap", "100", "--json")
    assert code == 0, err
    fits = tmp_path / "shared.json"
    fits.write_text(out)
    bench = tmp_path / "train.json"
    rows = [{"kind": "dense", "fraction": 1.0, "tokens_per_s": 1000.0, "flops_per_token": 1e9, "median_ms": 9.0},
            {"kind": "lowrank", "fraction": 0.32, "tokens_per_s": 1500.0, "flops_per_token": 1e9, "median_ms": 6.0}]
    bench.write_text(json.dumps({"meta": {}, "rows": rows}))
    code, text, err = cli("plan", "--fits", str(fits), "--budget-flops", "3.6e16", "--bench", str(bench))
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0].startswith("plan for 3.6e+16 training FLOPs (shared-exponent fit, baseline dense): lowrank-32")
    k = json.loads(out)["series"]["lowrank-32"]["compute_multiplier"]
    # 3.6e16 FLOPs at 1.5e12 FLOP/s take 24,000 s; with k = 1.25 the dense loss comes after 24,000 / k s
    assert lines[1].startswith(f"  lowrank-32: worth {k:.3g}x [")
    assert f"in {24000 / k / 3600:.2g} h at the bench's rate ({k * 1.5:.3g}x [" in lines[1]
    assert any(line.startswith("  blockdense-32: worth 0.8") for line in lines)
    code, _, err = cli("plan", "--fits", str(fits), "--budget-flops", "1e16", "--min-speedup", "1.2", "--bench",
                       str(bench))
    assert code == 2 and "apply to joint-law plans" in err


def test_human_time_units():
    from lowrank_lm.stats.planner import human_time

    assert [human_time(s) for s in (42, 143, 3 * 3600 + 600, 20 * 3600, 5 * 86400, 30 * 86400)] == \
        ["42 s", "2 min", "3.2 h", "20 h", "5 days", "30 days"]


def _joint_table(path, m_true: float = 1.5) -> None:
    """Two structures at 3 sizes x 3 token budgets on L = 1.8 + 400 (m N)^-0.34 + 900 D^-0.28, 0.2% noise."""
    rng = np.random.default_rng(4)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "series", "params", "tokens", "flops", "loss"])
        for name, m in (("dense", 1.0), ("lowrank-32", m_true)):
            for N, D in ((N, D) for N in (1e6, 4e6, 1.6e7) for D in (2e7, 8e7, 3.2e8)):
                loss = (1.8 + 400 * (m * N) ** -0.34 + 900 * D ** -0.28) * np.exp(rng.normal(0, 0.002))
                w.writerow([f"{name}-{N:g}-{D:g}", name, int(N), int(D), 6 * N * D, f"{loss:.6f}"])


def test_shared_joint_recovers_a_parameter_multiplier(tmp_path):
    table = tmp_path / "joint.csv"
    _joint_table(table)
    code, out, err = cli("fit", str(table), "--law", "shared-joint", "--bootstrap", "60", "--json")
    assert code == 0, err
    data = json.loads(out)
    m = data["series"]["lowrank-32"]
    assert m["parameter_multiplier"] == pytest.approx(1.5, rel=0.1) and m["ci"][0] < 1.5 < m["ci"][1]
    assert data["alpha"] == pytest.approx(0.34, rel=0.25) and data["series"]["dense"]["n_cells"] == 9
    code, text, _ = cli("fit", str(table), "--law", "shared-joint", "--bootstrap", "0")
    assert f"  lowrank-32: each parameter worth {m['parameter_multiplier']:.3g}x one of dense's (9 points)" in text


def test_shared_joint_needs_token_budgets(tmp_path):
    table = tmp_path / "results.csv"
    _write_table(table)  # one token budget per run: compute multipliers only
    with table.open() as fh:
        rows = list(csv.DictReader(fh))
    with table.open("w", newline="") as fh:
        w = csv.DictWriter(fh, [*rows[0], "params", "tokens"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "params": int(float(r["flops"]) / 6e6), "tokens": 1000000})
    code, _, err = cli("fit", str(table), "--law", "shared-joint")
    assert code == 2 and "needs runs at two or more token budgets" in err


def test_token_budgets_are_a_data_axis():
    """Series name structures; compute-law curves split by token budget and pair only at equal budgets; the
    joint law takes every budget; token budgets are not IsoFLOP budgets."""
    from lowrank_lm.stats.compare import compare_all
    from lowrank_lm.stats.fit import fit_all
    from lowrank_lm.stats.isoflop import is_isoflop
    from lowrank_lm.stats.joint import series_from_rows
    from lowrank_lm.stats.table import split_token_budgets

    rows = []
    for name, k in (("dense", 1.0), ("lowrank-32", 1.2)):
        for budget, D in (("t150k", 1.5e5), ("t450k", 4.5e5)):
            for N in (1e5, 2e5, 4e5, 8e5):
                loss = 2.0 + 40 * (k * N) ** -0.3 + 300 * D ** -0.3
                rows.append({"series": name, "x": 6 * N * D, "params": N, "tokens": D, "flops": 6 * N * D,
                             "budget": budget, "loss": loss, "loss_err": 0.0, "size": f"s{int(N)}"})
    split = split_token_budgets(rows)
    assert sorted({r["series"] for r in split}) == ["dense@t150k", "dense@t450k", "lowrank-32@t150k",
                                                    "lowrank-32@t450k"]
    points = Series.from_rows(split)
    result = fit_all(points, FitOptions(n_bootstrap=20))
    pairs = [(c["a"], c["b"]) for c in compare_all(result, "dense", points=points)]
    assert sorted(pairs) == [("lowrank-32@t150k", "dense@t150k"), ("lowrank-32@t450k", "dense@t450k")]
    joint = series_from_rows(rows, "rows")
    assert joint["dense"].n == 8 and not is_isoflop(joint["dense"])  # 4 sizes per token budget: not IsoFLOP
    flop = series_from_rows([{**r, "budget": "C1e12"} for r in rows], "rows")
    assert is_isoflop(flop["dense"])


def test_isoflop_figure_without_laws_has_no_empty_legend(recwarn):
    """One budget gives profiles but no N*(C) law: the right panel gets no legend box and nothing is warned."""
    import matplotlib.pyplot as plt

    from lowrank_lm.stats import plots
    from lowrank_lm.stats.isoflop import analyse
    from lowrank_lm.stats.joint import series_from_rows

    rows = [{"series": "dense", "x": N, "params": N, "tokens": 1e12 / (6 * N), "flops": 1e12, "budget": "C1e12",
             "loss": 3.0 + 0.2 * (np.log(N / 2e5)) ** 2, "loss_err": 0.0} for N in (5e4, 1e5, 2e5, 4e5, 8e5)]
    iso, _ = analyse(series_from_rows(rows, "rows"), {}, None, 0, 0.95, 0)
    fig = plots.isoflop_figure(iso)
    left, right = fig.axes
    assert left.get_legend() is not None and right.get_legend() is None
    assert not [w for w in recwarn if "legend" in str(w.message)]
    plt.close(fig)


def test_an_isoflop_design_is_fitted_on_its_lower_envelope(tmp_path):
    """Three sizes per FLOP budget: the best is on the curve, the other two 0.05 and 0.2 above it (too small, too
    large). The compute-axis fit takes each budget's best size; fitting all nine as one L(C) would bend it."""
    table, rng = tmp_path / "results.csv", np.random.default_rng(5)
    budgets = np.logspace(15, 18, 4)
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "series", "size", "budget", "flops", "loss"])
        for name, k in TRUTH.items():
            for c in budgets:
                best = (E + A * (k * c) ** -ALPHA) * np.exp(rng.normal(0, 0.002))
                for size, above in (("s", 0.05), ("m", 0.0), ("l", 0.2)):
                    w.writerow([f"{name}-{size}-C{c:.0e}", name, size, f"C{c:.0e}", f"{c:.6g}", f"{best + above:.6f}"])
    code, out, err = cli("fit", str(table), "--law", "shared", "--bootstrap", "100", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["settings"]["off_frontier"] == 2 * len(budgets) * len(TRUTH)
    for name, k in TRUTH.items():
        assert data["series"][name]["n_points"] == len(budgets)
        assert data["series"][name]["compute_multiplier"] == pytest.approx(k, rel=0.05)
    code, text, _ = cli("fit", str(table), "--bootstrap", "50")  # the compute law reads the same envelope
    assert code == 0 and "IsoFLOP design: at each FLOP budget a series' point is its best size" in text
    assert "24 other size(s)' points are left out" in text
