"""The joint law L(N, D), IsoFLOP profiles, seeds in the intervals and the planner, on synthetic data."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lowrank_lm.cli import main
from lowrank_lm.stats.isoflop import analyse, profile_series
from lowrank_lm.stats.joint import JointFit, JointOptions, JointSeries, _Problem, fit_joint
from lowrank_lm.stats.planner import load_fits, plan
from lowrank_lm.stats.seeds import average_seeds, group_cells, pooled_noise

# Chinchilla's fitted law (Hoffmann et al. 2022, approach 3) as the ground truth.
TRUTH = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}


def law(N, D, t=TRUTH):
    return t["E"] + t["A"] * np.asarray(N, float) ** -t["alpha"] + t["B"] * np.asarray(D, float) ** -t["beta"]


def grid_series(seed: int, sigma: float, seeds: int = 1, name: str = "s") -> JointSeries:
    """5 sizes x 5 token budgets (two decades each), ``seeds`` runs per cell, log-normal noise."""
    rng = np.random.default_rng(seed)
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e6, 1e8, 5), np.geomspace(2e7, 2e9, 5)))
    N, D = np.repeat(N, seeds), np.repeat(D, seeds)
    loss = law(N, D) * np.exp(sigma * rng.standard_normal(len(N)))
    return JointSeries(name, N, D, loss)


def test_joint_fit_recovers_alpha_and_beta_and_its_intervals_cover_them():
    """20 independent data sets: every point estimate within 10%, the 95% intervals cover the truth in >= 18."""
    covered = {"alpha": 0, "beta": 0}
    for seed in range(20):
        fit = fit_joint({"s": grid_series(seed, sigma=0.005)}, JointOptions(n_bootstrap=400, seed=seed)).series["s"]
        for name in covered:
            value, (lo, hi) = getattr(fit, name), getattr(fit, f"{name}_ci")
            assert abs(value / TRUSTED[name] - 1) < 0.10, (seed, name, value)
            covered[name] += lo <= TRUSTED[name] <= hi
    assert covered["alpha"] >= 18 and covered["beta"] >= 18, covered


TRUSTED = {k: TRUTH[k] for k in ("alpha", "beta")}


def test_batched_bootstrap_refits_agree_with_scipy():
    """The vectorised Levenberg-Marquardt refits land where scipy's trust-region solver does."""
    ser = grid_series(0, sigma=0.01)
    cells = ser.cells()
    lnN = np.log([k[0] for k in cells.keys])
    lnD = np.log([k[1] for k in cells.keys])
    prob = _Problem(lnN - lnN.mean(), lnD - lnD.mean(), float(lnN.mean()), float(lnD.mean()), 1e-3)
    p_hat = prob.solve(cells.mean_log, prob.grid(cells.mean_log)[::8]).x
    rng = np.random.default_rng(1)
    Y = prob.model(p_hat)[None, :] + 0.01 * rng.standard_normal((30, len(cells.mean_log)))
    batched = prob.solve_many(Y, p_hat)
    one_by_one = np.array([prob.solve(y, [p_hat]).x for y in Y])
    assert np.isfinite(batched).all()
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)


def seeded_series(spread: float, name: str = "s") -> JointSeries:
    """Two seeds per cell whose mean sits exactly on the law: only the seed-to-seed spread differs."""
    rng = np.random.default_rng(7)
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e6, 1e8, 4), np.geomspace(2e7, 2e9, 4)))
    dev = spread * rng.standard_normal(len(N))
    loss = np.concatenate([law(N, D) * np.exp(dev), law(N, D) * np.exp(-dev)])
    return JointSeries(name, np.concatenate([N, N]), np.concatenate([D, D]), loss, seeds=["1"] * 16 + ["2"] * 16)


def test_doubling_the_seed_noise_widens_the_intervals():
    widths = []
    for spread in (0.01, 0.02):
        result = fit_joint({"s": seeded_series(spread)}, JointOptions(n_bootstrap=400))
        assert result.noise is not None and result.noise.dof == 16
        fit = result.series["s"]
        widths.append((fit.alpha_ci[1] - fit.alpha_ci[0], fit.beta_ci[1] - fit.beta_ci[0]))
        assert fit.alpha == pytest.approx(TRUTH["alpha"], rel=1e-3)  # the cell means are exact
    assert result.noise.sd == pytest.approx(2 * fit_joint({"s": seeded_series(0.01)}, JointOptions(
        n_bootstrap=0)).noise.sd)
    assert widths[1][0] > 1.6 * widths[0][0] and widths[1][1] > 1.6 * widths[0][1], widths


def test_seeds_are_averaged_per_configuration_for_the_compute_law():
    rows = [{"series": "dense", "x": 1e12, "size": "s1", "params": "10", "tokens": "5", "budget": "", "loss": loss,
             "loss_err": 0.0, "seed": str(seed)} for seed, loss in ((1, 4.0), (2, 4.2))]
    rows += [{"series": "dense", "x": 1e12, "size": "s2", "params": "20", "tokens": "2", "budget": "", "loss": 3.9,
              "loss_err": 0.0, "seed": "1"}]
    merged, noise = average_seeds(rows)
    assert [r["seeds"] for r in merged] == [2, 1]  # same FLOPs, other size: not a seed of s1
    assert merged[0]["loss"] == pytest.approx(math.sqrt(4.0 * 4.2))
    assert noise is not None and noise.dof == 1
    assert noise.sd == pytest.approx(abs(math.log(4.2 / 4.0)) / math.sqrt(2))
    assert merged[0]["loss_err"] == pytest.approx(noise.sd * merged[0]["loss"] / math.sqrt(2))
    cells = group_cells(["a", "a", "b"], np.array([1.0, math.e, 2.0]))
    assert pooled_noise([cells]).sd == pytest.approx(math.sqrt(0.5))


def isoflop_series(name: str, t: dict, step: float, seed: int = 0, sigma: float = 0.002) -> JointSeries:
    """Budgets 1e15..6.4e16 with C = 6ND; 7 sizes per budget spaced by ``step``, around the true optimum but
    not centred on it (0.3 steps off), as a real design would be."""
    rng = np.random.default_rng(seed)
    N, D, C, budgets = [], [], [], []
    for c in (1e15, 4e15, 1.6e16, 6.4e16):
        centre = true_optimum(c, t)
        for k in range(-3, 4):
            n = centre * step ** (k + 0.3)
            N.append(n)
            D.append(c / (6 * n))
            C.append(c)
            budgets.append(f"C{c:.2g}")
    N, D = np.array(N), np.array(D)
    loss = law(N, D, t) * np.exp(sigma * rng.standard_normal(len(N)))
    return JointSeries(name, N, D, loss, C=np.array(C), budgets=budgets)


def true_optimum(c: float, t: dict) -> float:
    n = np.geomspace(1e4, 1e11, 200001)
    return float(n[np.argmin(law(n, c / (6 * n), t))])


def test_isoflop_minima_are_recovered_within_one_grid_step():
    step = 2.0
    ser = isoflop_series("dense", TRUTH, step)
    iso = profile_series(ser, None, n_bootstrap=200, level=0.95, rng=np.random.default_rng(0))
    assert len(iso.profiles) == 4
    for p in iso.profiles:
        assert abs(math.log(p.N_opt / true_optimum(p.C, TRUTH))) < math.log(step), p.label
        assert p.inside and p.N_opt_ci[0] < p.N_opt < p.N_opt_ci[1]
        assert p.D_opt * p.N_opt * 6 == pytest.approx(p.C, rel=1e-6)
    expected = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])  # N* ~ C^(beta / (alpha + beta)) when C = 6ND
    assert iso.laws["N_isoflop"].exponent == pytest.approx(expected, abs=0.03)
    assert iso.laws["D_isoflop"].exponent == pytest.approx(1 - expected, abs=0.03)


def test_optimum_laws_from_both_approaches_and_a_comparison():
    other = dict(TRUTH, alpha=0.28, beta=0.34)  # parameters matter less: the optimum grows faster with C
    series = {"dense": isoflop_series("dense", TRUTH, 1.6, seed=1),
              "lowrank-32": isoflop_series("lowrank-32", other, 1.6, seed=2)}
    result = fit_joint(series, JointOptions(n_bootstrap=200))
    iso, comparisons = analyse(series, result.series, result.noise, 200, 0.95, 0)
    for name, t in (("dense", TRUTH), ("lowrank-32", other)):
        expected = t["beta"] / (t["alpha"] + t["beta"])
        assert iso[name].laws["N_joint"].exponent == pytest.approx(expected, abs=0.02)
        assert iso[name].laws["N_isoflop"].exponent == pytest.approx(expected, abs=0.04)
    (c,) = comparisons
    assert c["exponents"]["N_joint"]["verdict"] == "lowrank-32 grows faster than dense"
    twins = {"a": series["dense"], "b": isoflop_series("b", TRUTH, 1.6, seed=3)}  # one law, other noise
    _, (same,) = analyse(twins, fit_joint(twins, JointOptions(n_bootstrap=200)).series, None, 200, 0.95, 0)
    assert {e["verdict"] for e in same["exponents"].values()} == {"not distinguishable"}


def test_planner_picks_the_known_optimum(tmp_path):
    better = dict(TRUTH, A=300.0)  # same exponents, smaller parameter term: lower loss at every budget
    series = {"dense": isoflop_series("dense", TRUTH, 1.6, seed=4),
              "lowrank-32": isoflop_series("lowrank-32", better, 1.6, seed=5)}
    series["lowrank-32"].structure, series["lowrank-32"].fraction = "lowrank", 0.32
    result = fit_joint(series, JointOptions(n_bootstrap=300))
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(result.to_json()))
    fits = load_fits(path)
    budget = 2e16
    p = plan(fits, budget)
    assert p.best.series == "lowrank-32" and p.p_best >= 0.95
    n_true = true_optimum(budget, better)
    assert abs(math.log(p.best.N / n_true)) < 0.1
    assert p.best.loss == pytest.approx(law(n_true, budget / (6 * n_true), better), rel=0.01)
    assert p.best.loss_ci[0] < p.best.loss < p.best.loss_ci[1]
    assert not p.best.extrapolation
    assert plan(fits, 1e18).best.extrapolation  # beyond the fitted budgets: said
    bench = [{"kind": "dense", "fraction": 1.0, "tokens_per_s": 100.0, "median_ms": 10.0},
             {"kind": "lowrank", "fraction": 0.32, "tokens_per_s": 90.0, "median_ms": 11.0}]
    slow = plan(fits, budget, bench, min_speedup=1.0)
    assert slow.best.series == "dense" and "speedup" in next(c for c in slow.candidates
                                                               if c.series == "lowrank-32").excluded


def write_results(path: Path, series: dict[str, JointSeries], seeds: int = 2) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "series", "params", "tokens", "flops", "budget", "seed", "loss",
                                           "status"])
        w.writeheader()
        rng = np.random.default_rng(0)
        for name, s in series.items():
            for i in range(s.n):
                for seed in range(1, seeds + 1):
                    w.writerow({"name": f"{name}-{i}-{seed}", "series": name, "params": s.N[i], "tokens": s.D[i],
                                "flops": s.C[i], "budget": s.budgets[i], "seed": seed,
                                "loss": s.loss[i] * math.exp(0.003 * rng.standard_normal()), "status": "done"})


def test_cli_joint_json_contract_report_and_plan(tmp_path, capsys):
    csv_path = tmp_path / "results.csv"
    write_results(csv_path, {"dense": isoflop_series("dense", TRUTH, 1.6)})
    with pytest.raises(SystemExit) as e:
        main(["fit", str(csv_path), "--law", "joint", "--json", "--bootstrap", "100"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    d = out["series"]["dense"]
    for key in ("law", "E", "A", "alpha", "B", "beta", "alpha_ci", "beta_ci", "n_points"):
        assert key in d
    assert d["law"] == "joint" and d["n_points"] == 56 and len(d["alpha_ci"]) == 2
    assert out["seed_noise"]["dof"] == 28
    assert len(out["isoflop"]["dense"]["profiles"]) == 4
    fit_path = tmp_path / "fit.json"
    fit_path.write_text(json.dumps(out))
    with pytest.raises(SystemExit) as e:
        main(["fit", str(csv_path), "--law", "joint", "--report", str(tmp_path / "rep"), "--bootstrap", "50"])
    text = capsys.readouterr().out
    assert "run-to-run noise" in text and "IsoFLOP" in text
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {"report.md", "fit.json", "joint.png", "isoflop.png",
                                                              ".lowrank-lm-fit.json"}  # fit's record of its files
    with pytest.raises(SystemExit) as e:
        main(["plan", "--fits", str(fit_path), "--budget-flops", "1e16"])
    assert e.value.code == 0
    assert "plan for 1e+16 training FLOPs: dense (the only candidate)" in capsys.readouterr().out


@pytest.mark.parametrize("factor, verdict", [(0.95, "lowrank-32 lower"), (1.0, "not distinguishable")])
def test_best_measured_losses_are_compared_with_the_seed_noise(tmp_path, capsys, factor, verdict):
    # the same design, the second series' losses scaled by ``factor``; 2 seeds with 0.3% noise per run
    dense = isoflop_series("dense", TRUTH, 1.6)
    other = replace(dense, name="lowrank-32", loss=dense.loss * factor)
    csv_path = tmp_path / "results.csv"
    write_results(csv_path, {"dense": dense, "lowrank-32": other})
    with pytest.raises(SystemExit) as e:
        main(["fit", str(csv_path), "--law", "joint", "--json", "--bootstrap", "20"])
    assert e.value.code == 0
    best = json.loads(capsys.readouterr().out)["comparisons"][0]["best_measured"]
    assert [b["budget"] for b in best] == sorted(set(dense.budgets), key=lambda b: float(b[1:]))
    for b in best:
        assert b["verdict"] == verdict
        assert b["diff_log"] == pytest.approx(-math.log(factor), abs=0.01)
        lo, hi = b["diff_log_ci"]
        assert 0.002 < hi - lo < 0.03  # +-1.96 x 0.3% x sqrt(1/2 + 1/2), from the measured seed noise
        assert not b["at_edge"]  # the design is centred near each optimum


def test_cli_joint_counts_every_run_read_when_no_series_can_be_fitted(tmp_path, capsys):
    # one budget: N and D move together, so no joint fit; the header still counts the runs and series read
    full = isoflop_series("dense", TRUTH, 1.6)
    one = [i for i, b in enumerate(full.budgets) if b == full.budgets[0]]
    single = JointSeries("dense", full.N[one], full.D[one], full.loss[one], C=full.C[one],
                         budgets=[full.budgets[i] for i in one])
    csv_path = tmp_path / "results.csv"
    write_results(csv_path, {"dense": single, "lowrank-32": replace(single, name="lowrank-32")})
    with pytest.raises(SystemExit) as e:
        main(["fit", str(csv_path), "--law", "joint", "--bootstrap", "20"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith(f"joint fit of {csv_path}: 28 runs in 2 series,")  # 7 sizes x 2 seeds x 2
    assert "no joint fit" in text


@pytest.mark.parametrize("argv, message", [
    (["--law", "joint", "--x", "tokens"], "--x apply to the compute law only"),
    (["--params", "non-embedding"], "--params applies to the joint law only"),
])
def test_cli_options_of_the_other_law_are_errors(tmp_path, capsys, argv, message):
    csv_path = tmp_path / "results.csv"
    write_results(csv_path, {"dense": isoflop_series("dense", TRUTH, 1.6)}, seeds=1)
    with pytest.raises(SystemExit) as e:
        main(["fit", str(csv_path), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_plan_refuses_compute_law_fits(tmp_path, capsys):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"series": {"dense": {"alpha": 0.1, "E": 1.0}}}))
    with pytest.raises(SystemExit) as e:
        main(["plan", "--fits", str(path), "--budget-flops", "1e16"])
    assert e.value.code == 2
    assert "--law joint" in capsys.readouterr().err


def test_joint_fit_round_trips_through_json():
    result = fit_joint({"s": grid_series(3, 0.005)}, JointOptions(n_bootstrap=50))
    again = JointFit.from_json("s", json.loads(json.dumps(result.series["s"].to_json())))
    np.testing.assert_allclose(again.predict(3e6, 4e8), result.series["s"].predict(3e6, 4e8))
    assert again.ok_samples().shape == result.series["s"].ok_samples().shape


def test_one_budget_gives_an_isoflop_profile_but_no_joint_fit(tmp_path, capsys):
    full = isoflop_series("dense", TRUTH, 1.6)
    first = np.array([b == full.budgets[0] for b in full.budgets])
    one = JointSeries("dense", full.N[first], full.D[first], full.loss[first], C=full.C[first],
                      budgets=[b for b, k in zip(full.budgets, first) if k])
    csv_path = tmp_path / "results.csv"
    write_results(csv_path, {"dense": one})
    with pytest.raises(SystemExit) as e:
        main(["fit", str(csv_path), "--law", "joint", "--json", "--bootstrap", "100"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series"] == {} and "N and D move together" in out["warnings"][0]
    (profile,) = out["isoflop"]["dense"]["profiles"]
    assert abs(math.log(profile["N_opt"] / true_optimum(one.C[0], TRUTH))) < math.log(1.6)
    assert out["isoflop"]["dense"]["laws"] == {}  # one budget: no N*(C)
