"""`sweep`: grid expansion, the presets, sharding, skip-finished / resume / retry logic with a fake trainer."""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import os
import sys
from pathlib import Path

import pytest

from lowrank_lm.cli import main
from lowrank_lm.errors import UserError
from lowrank_lm.launch.execute import (
    FAILED_MARKER,
    LOCK_NAME,
    RunFailed,
    execute,
    run_state,
    write_results,
    write_run_config,
)
from lowrank_lm.launch.sweep import RunSpec, load_sweep, lr_label, parse_shard, shard_runs
from lowrank_lm.resolve import load_config
from lowrank_lm.stats.table import read_points
from lowrank_lm.train.rundir import run_ownership
from lowrank_lm.train.summary import RunSummary

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "configs" / "cpu"


def write_sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'runs'}\n" + body)
    return path


FOUR_SIZES = f"""
sizes:
  s1: {CPU / 'scale-1.yaml'}
  s2: {CPU / 'scale-2.yaml'}
  s3: {CPU / 'scale-3.yaml'}
  s4: {CPU / 'scale-4.yaml'}
structures:
  dense: {{}}
  lowrank: {{fractions: [0.63, 0.32]}}
budgets: {{tokens: [40960]}}
"""

# A known law per series, so the results table can be checked through `fit`.
LAW = {"dense": 0.30, "lowrank-63": 0.32, "lowrank-32": 0.35}


def fake_loss(spec: RunSpec) -> float:
    return 2.0 + 3.0 * (spec.flops / 1e10) ** -LAW[spec.series]


class FakeTrainer:
    """Does to a run folder what the trainer does: a checkpoint while training, summary.json at the end."""

    def __init__(self, interrupt: str | None = None, fail: tuple[str, ...] = ()):
        self.calls: list[str] = []
        self.interrupt = interrupt
        self.fail = fail

    def __call__(self, spec: RunSpec) -> None:
        self.calls.append(spec.name)
        cfg = load_config(spec.config_path)  # the sweep wrote the run's config before starting it
        assert cfg.train.out_dir == str(spec.run_dir) and cfg.train.resume == "auto"
        if spec.name in self.fail:
            raise RunFailed("exited with code 1")
        write_checkpoint(spec, step=max(1, spec.steps // 2))
        if spec.name == self.interrupt:
            raise KeyboardInterrupt
        fake_summary(spec, fake_loss(spec)).write(spec.run_dir / "summary.json")


def fake_summary(spec: RunSpec, loss: float, wall_s: float = 2.0) -> RunSummary:
    """The summary the trainer would write for ``spec``, with a made-up loss and time."""
    return RunSummary(name=spec.name, structure=spec.kind, params=spec.params,
                      params_non_embedding=spec.params_non_embedding, params_ffn=spec.params_ffn,
                      tokens=spec.tokens, unique_tokens=spec.tokens, steps=spec.steps, train_flops=spec.flops,
                      train_s=wall_s, wall_s=wall_s, tokens_per_s=spec.tokens / wall_s, skipped_steps=0,
                      peak_memory_mb=100.0, device="cpu", world_size=1, precision="fp32", final_val_loss=loss,
                      final_val_ppl=math.exp(loss), val_tokens=1024)


def write_checkpoint(spec: RunSpec, step: int) -> None:
    ckpt = spec.run_dir / "checkpoints" / f"step-{step:08d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "meta.json").write_text(json.dumps({"step": step, "tokens": step * 4096, "total_steps": spec.steps}))


def test_grid_expansion(tmp_path):
    path = write_sweep(tmp_path, f"""
name: grid
sizes:
  s1: {CPU / 'scale-1.yaml'}
  s2: {{config: {CPU / 'scale-2.yaml'}, overrides: [train.lr=0.001]}}
structures:
  dense: {{}}
  lowrank: {{fractions: [0.63, 32]}}
  blockshuffle: {{fractions: [0.63]}}
budgets: {{tokens_per_param: [2, 4]}}
overrides: [train.seed=7]
""")
    plan = load_sweep(path)
    assert len(plan.runs) == 2 * 4 * 2
    names = [r.name for r in plan.runs]
    assert names[:4] == ["s1-dense-tpp2", "s1-dense-tpp4", "s1-lowrank-63-tpp2", "s1-lowrank-63-tpp4"]
    runs = {r.name: r for r in plan.runs}
    r = runs["s2-lowrank-32-tpp4"]
    # the series is the structure; the budget is a column of the data, not part of the name
    assert r.series == "lowrank-32" and r.budget == "tpp4" and r.size == "s2" and r.fraction == pytest.approx(0.32)
    assert r.cfg.model.ffn.rank == 32 and r.cfg.model.hidden_dim == 128  # R = h/4 is the nearest to 32%
    assert r.ffn_fraction == pytest.approx(0.3125)
    assert runs["s2-lowrank-63-tpp4"].cfg.model.ffn.rank == 64
    assert runs["s1-blockshuffle-63-tpp2"].cfg.model.ffn.num_blocks == 2
    assert r.cfg.train.lr == 0.001 and r.cfg.train.seed == 7 and runs["s1-dense-tpp2"].cfg.train.lr == 3e-3
    # structured runs train on the dense twin's budget: 4 tokens per dense parameter
    dense = runs["s2-dense-tpp4"]
    assert r.cfg.train.tokens == dense.cfg.train.tokens == round(4 * dense.params)
    assert r.params < dense.params and r.flops < dense.flops
    assert r.run_dir == tmp_path / "runs" / "s2-lowrank-32-tpp4" and r.cfg.train.out_dir == str(r.run_dir)
    assert plan.results_csv == tmp_path / "runs" / "results.csv"


@pytest.mark.parametrize("body,message", [
    ("sizes: {a: x.yaml}\nstructures: {dense: {}}\nbogus: 1\n", "unknown key bogus"),
    ("sizes: {a: nope.yaml}\nstructures: {dense: {}}\n", "config file not found"),
    (f"sizes: {{a: {CPU / 'tiny.yaml'}}}\nstructures: {{lowrank: {{}}}}\n", "give fractions"),
    (f"sizes: {{a: {CPU / 'tiny.yaml'}}}\nstructures: {{dense: {{}}}}\nbudgets: {{tokens: [10]}}\n",
     "less than one step"),
    (f"sizes: {{a: {CPU / 'tiny.yaml'}}}\nstructures: {{lowrank: {{fractions: [150]}}}}\n", "not a fraction"),
    # the schema is the config's converter: every key known, every value typed, a did-you-mean for typos
    ("sizes: {a: x.yaml}\nstrucures: {dense: {}}\n", r"unknown key strucures; did you mean structures\?"),
    ("sizes: {a: {config: x.yaml, overides: []}}\nstructures: {dense: {}}\n",
     r"unknown key sizes\.a\.overides; did you mean sizes\.a\.overrides\?"),
    ("sizes: {a: x.yaml}\nstructures: {lowrank: {fractons: [0.5]}}\n",
     r"unknown key structures\.lowrank\.fractons; did you mean structures\.lowrank\.fractions\?"),
    ("sizes: {a: x.yaml}\nstructures: {dense: {}}\nbudgets: {tokns: [100]}\n",
     r"unknown key budgets\.tokns; did you mean budgets\.tokens\?"),
    ("sizes: {a: x.yaml}\nstructures: {x: {kind: lowrnk}}\n", r"structures\.x\.kind: 'lowrnk' is not one of .*"
                                                                 r"did you mean 'lowrank'"),
    ("sizes: {a: x.yaml}\nstructures: {dense: {}}\nrank_multiple: eight\n", "rank_multiple: expected int, got 'eight'"),
    # the learning-rate axis: positive, non-empty, each rate once, and never beside a train.lr override it replaces
    ("sizes: {a: x.yaml}\nstructures: {dense: {}}\nlearning_rates: [1e-3, 0]\n",
     r"learning_rates: 0\.0 is not a positive learning rate"),
    ("sizes: {a: x.yaml}\nstructures: {dense: {learning_rates: []}}\n",
     r"structures\.dense\.learning_rates must be a non-empty list"),
    ("sizes: {a: x.yaml}\nstructures: {dense: {}}\nlearning_rates: [1e-3, 0.0010001]\n",
     r"learning_rates has 0\.001 and 0\.0010001, which are the same rate lr1e-3"),
    ("sizes: {a: x.yaml}\nstructures: {dense: {learning_rates: [1e-3], overrides: [train.lr=2e-3]}}\n",
     r"structures\.dense\.overrides has 'train\.lr=2e-3' while structures\.dense\.learning_rates sets"),
    ("sizes: {a: x.yaml}\nstructures: {dense: {overrides: [train.lr=2e-3]}}\nlearning_rates: [1e-3]\n",
     r"structures\.dense\.overrides has 'train\.lr=2e-3' while learning_rates sets"),
    ("sizes: {a: x.yaml}\nstructures: {dense: {}}\nlearning_rates: [1e-3]\noverrides: [' train.lr = 2e-3']\n",
     r"overrides has ' train\.lr = 2e-3' while learning_rates sets"),
    ("sizes: {a: {config: x.yaml, overrides: [train.lr=2e-3]}}\nstructures: {dense: {learning_rates: [1e-3]}}\n",
     r"sizes\.a\.overrides has 'train\.lr=2e-3' while learning_rates set the learning rate of structure dense"),
    ("sizes: {a: x.yaml}\nstructures: {dense: {}}\nlearning_rates: 1e-3\n", "learning_rates: expected a list"),
    ("sizes: {a: {config: x.yaml, seeds: []}}\nstructures: {dense: {}}\n", r"sizes\.a\.seeds must be a non-empty list"),
    ("sizes: {a: {config: x.yaml, seeds: [1, 2]}}\nstructures: {dense: {seeds: [3]}}\n",
     r"sizes\.a\.seeds and structures\.dense\.seeds both set the seeds of a-dense's runs"),
    ("sizes: {a: x.yaml}\nstructures: {dense: {seeds: [3, 3]}}\n", r"structures\.dense\.seeds has a repeated value"),
])
def test_sweep_file_errors(tmp_path, body, message):
    with pytest.raises(UserError, match=message) as e:
        load_sweep(write_sweep(tmp_path, body))
    assert str(e.value).startswith(f"{tmp_path}") and "\n" not in str(e.value)  # one line, naming the file


@pytest.mark.parametrize("lr,label", [(2e-3, "lr2e-3"), (0.1 * 3, "lr3e-1"), (6.25e-4, "lr6.25e-4"),
                                      (0.0015, "lr1.5e-3"), (1.0, "lr1e0"), (0.04, "lr4e-2")])
def test_lr_label_is_short_and_free_of_float_noise(lr, label):
    assert lr_label(lr) == label


LR_AXIS = f"""
sizes: {{a: {CPU / 'tiny.yaml'}}}
structures:
  dense: {{}}
  lowrank: {{fractions: [0.32], learning_rates: [5e-3]}}
learning_rates: [1e-3, 2e-3]
seeds: [1, 2]
"""


def test_learning_rate_axis_names_configs_series_and_rows(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, LR_AXIS))
    # the rates multiply the grid like seeds do (rate outside seed); a structure's own list replaces the sweep's
    assert [r.name for r in plan.runs] == [
        "a-dense-lr1e-3-seed1", "a-dense-lr1e-3-seed2", "a-dense-lr2e-3-seed1", "a-dense-lr2e-3-seed2",
        "a-lowrank-32-lr5e-3-seed1", "a-lowrank-32-lr5e-3-seed2"]
    assert [(r.cfg.train.lr, r.cfg.train.seed) for r in plan.runs] == [
        (0.001, 1), (0.001, 2), (0.002, 1), (0.002, 2), (0.005, 1), (0.005, 2)]
    # several rates: one series per rate (a fit never pools them); a single rate: the plain series
    assert [r.series for r in plan.runs] == ["dense-lr1e-3"] * 2 + ["dense-lr2e-3"] * 2 + ["lowrank-32"] * 2
    assert load_config(CPU / "tiny.yaml").train.lr == 2e-3  # the config's own rate is replaced, not kept

    for spec in plan.runs:
        fake_summary(spec, 5.0 + 1000 * spec.cfg.train.lr).write(_mkdir(spec.run_dir) / "summary.json")
    write_results(plan, {r.name: run_state(r) for r in plan.runs})
    rows, _ = read_points(plan.results_csv)
    assert [(r["name"], float(r["lr"]), r["loss"]) for r in rows][::2] == [
        ("a-dense-lr1e-3-seed1", 0.001, 6.0), ("a-dense-lr2e-3-seed1", 0.002, 7.0), ("a-lowrank-32-lr5e-3-seed1",
                                                                                 0.005, 10.0)]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_results_table_without_the_lr_column_still_reads(tmp_path):
    from lowrank_lm.stats.seeds import average_seeds

    old = tmp_path / "results.csv"
    old.write_text("name,series,size,budget,params,tokens,flops,seed,loss\n"
                   "a,dense,s1,,100,1000,6e5,1,4.0\nb,dense,s1,,100,1000,6e5,2,4.4\n")
    rows, _ = read_points(old)
    assert [r.get("lr") for r in rows] == [None, None]  # a missing column reads as empty
    merged, noise = average_seeds(rows)  # two seeds of one cell, as before the column existed
    assert len(merged) == 1 and merged[0]["seeds"] == 2 and noise is not None
    # with the column, different rates are different cells even inside one series
    rows_lr = [{**r, "lr": lr} for r, lr in zip(rows, ("0.001", "0.002"))]
    merged, noise = average_seeds(rows_lr)
    assert [m["loss"] for m in merged] == [4.0, 4.4] and noise is None


def test_a_size_with_its_own_seeds(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, f"""
sizes:
  a: {{config: {CPU / 'tiny.yaml'}, seeds: [3, 4]}}
  b: {{config: {CPU / 'tiny.yaml'}, overrides: [model.num_layers=2]}}
structures: {{dense: {{}}}}
seeds: [7]
"""))
    # a's list replaces the sweep's one seed; the seed label appears where a size has several seeds
    assert [(r.name, r.seed, r.cfg.train.seed) for r in plan.runs] == [
        ("a-dense-seed3", 3, 3), ("a-dense-seed4", 4, 4), ("b-dense", 7, 7)]
    assert {r.series for r in plan.runs} == {"dense"}


def test_a_structure_with_its_own_seeds(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, f"""
sizes:
  a: {{config: {CPU / 'tiny.yaml'}}}
structures:
  dense: {{seeds: [1, 2]}}
  lowrank: {{fractions: [0.32]}}
seeds: [7]
"""))
    # dense's list replaces the sweep's one seed; lowrank keeps it (one seed: no seed label)
    assert [(r.name, r.seed, r.cfg.train.seed) for r in plan.runs] == [
        ("a-dense-seed1", 1, 1), ("a-dense-seed2", 2, 2), ("a-lowrank-32", 7, 7)]


def test_lr_cpu_preset_reads_as_a_mup_transfer_grid():
    from lowrank_lm.launch.sweep_file import read_sweep_file

    sweep = read_sweep_file(ROOT / "configs" / "sweeps" / "lr-cpu.yaml")
    rates = sweep.learning_rates
    assert rates is not None and len(rates) == 7
    assert all(b / a == pytest.approx(2.0) for a, b in itertools.pairwise(rates))
    assert list(sweep.structures) == ["dense", "lowrank", "blockdense", "blockshuffle", "btt", "cola"]
    assert all(v.fractions in (None, [0.32]) for v in sweep.structures.values())
    assert [v.overrides for v in sweep.sizes.values()] == [[f"model.hidden_dim={w}"] for w in (64, 128, 256)]
    assert [v.seeds for v in sweep.sizes.values()] == [[1005, 2005], None, None]  # two seeds at the base width
    assert {"model.parametrization=mup", "model.mup_base_width=64"} <= set(sweep.overrides)



def test_structures_cpu_preset_is_an_isoflop_design_at_the_tuned_rates():
    plan = load_sweep(ROOT / "configs" / "sweeps" / "structures-cpu.yaml")
    assert len(plan.runs) == 4 * 3 * (2 + 2 + 4)  # widths x budgets x (dense and lowrank twice, four once)
    budgets = {r.budget for r in plan.runs}
    assert budgets == {"C1.5e11", "C3e11", "C6e11"}
    for r in plan.runs:  # every run spends its budget on its own model (to a step of tokens)
        assert r.flops == pytest.approx(float(r.budget[1:]), rel=0.02)
    rates = {r.series: r.cfg.train.lr for r in plan.runs}
    assert rates == {"dense": 1e-2, "lowrank-32": 1e-2, "cola-32": 1e-2, "blockdense-32": 5e-3,
                     "blockshuffle-32": 5e-3, "btt-32": 5e-3}  # the µP optima at width 64 (mup-cpu/table.md)
    assert {r.cfg.model.parametrization for r in plan.runs} == {"mup"}
    assert {r.cfg.model.hidden_dim for r in plan.runs} == {8, 16, 24, 32}


def test_blockdense_solves_from_its_fraction_alone_as_info_does(tmp_path):
    from lowrank_lm import sizing

    plan = load_sweep(write_sweep(tmp_path, f"sizes: {{a: {CPU / 'tiny.yaml'}}}\n"
                                            "structures: {blockdense: {fractions: [0.32]}}\n"))
    ffn = plan.runs[0].cfg.model.ffn
    dense = load_config(CPU / "tiny.yaml").model
    settings, _ = sizing.solve(dense, "blockdense", 0.32)  # what `info` and model.ffn.fraction resolve to
    assert (ffn.kind, ffn.rank, ffn.num_blocks) == ("blockdense", settings["rank"], settings["num_blocks"]) \
        and ffn.num_blocks == 4


def test_paper_preset_reproduces_the_paper_runs():
    plan = load_sweep(ROOT / "configs" / "sweeps" / "paper.yaml")
    assert len(plan.runs) == 4 * 7
    runs = {r.name: r for r in plan.runs}
    assert f"{runs['xl-dense'].flops:.2e}" == "2.10e+20"
    assert f"{runs['xl-lowrank-32'].flops:.2e}" == "1.29e+20" and round(runs["xl-lowrank-32"].params / 1e6) == 744
    assert f"{runs['xl-blockdense-63'].flops:.2e}" == "1.61e+20"
    assert (runs["m-blockdense-63"].cfg.model.ffn.rank, runs["m-blockdense-63"].cfg.model.ffn.num_blocks) == (768, 4)
    for size, tokens in (("s", 2.2e9), ("m", 6.7e9), ("l", 14.58e9), ("xl", 25.5e9)):
        same = {r.cfg.train.tokens for r in plan.runs if r.size == size}
        assert same == {round(tokens)}  # structured runs keep the dense model's token budget
    assert {r.series for r in plan.runs} == {"dense", "lowrank-63", "lowrank-32", "blockdense-63", "blockdense-32",
                                             "blockshuffle-63", "blockshuffle-32"}


def test_cpu_mini_preset():
    plan = load_sweep(ROOT / "configs" / "sweeps" / "cpu-mini.yaml")
    assert len(plan.runs) == 12
    assert {r.series for r in plan.runs} == {"dense", "lowrank-63", "lowrank-32"}
    assert len({r.size for r in plan.runs}) == 4
    for r in plan.runs:
        h = r.cfg.model.hidden_dim
        assert r.cfg.model.ffn.rank == {"dense": None, "lowrank-63": h // 2, "lowrank-32": h // 4}[r.series]
        assert r.cfg.train.precision == "bf16" and r.cfg.train.checkpoint_interval
    # bounded repetition on the embedded corpus (about 1.58M training tokens): at most ~1.6 epochs
    assert max(r.tokens for r in plan.runs) <= 2_500_000
    assert sum(r.flops for r in plan.runs) == pytest.approx(5.66e14, rel=0.01)  # regression pin: our own count


def test_sharding_partitions_and_balances(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, FOUR_SIZES))
    for n in (1, 2, 3, 5):
        shards = [shard_runs(plan.runs, i, n) for i in range(n)]
        names = [r.name for s in shards for r in s]
        assert sorted(names) == sorted(r.name for r in plan.runs)  # every run exactly once
        loads = [sum(r.flops for r in s) for s in shards]
        assert max(loads) - min(loads) <= max(r.flops for r in plan.runs)  # greedy LPT bound
        assert shards == [shard_runs(plan.runs, i, n) for i in range(n)]  # deterministic
    assert parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "x", "1/0", "-1/2"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


def test_skips_finished_resumes_interrupted_and_fits(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, FOUR_SIZES))
    runs = {r.name: r for r in plan.runs}
    for name in ("s1-dense", "s2-dense"):
        write_run_config(runs[name])
    FakeTrainer()(runs["s1-dense"])  # finished before the sweep started
    write_checkpoint(runs["s2-dense"], step=3)  # interrupted
    assert run_state(runs["s1-dense"]).status == "done"
    st = run_state(runs["s2-dense"])
    assert (st.status, st.step, st.total_steps) == ("interrupted", 3, runs["s2-dense"].steps)
    assert run_state(runs["s3-dense"]).status == "pending"

    trainer = FakeTrainer()
    out = tmp_path / "log.txt"
    with out.open("w") as fh:
        outcome = execute(plan, trainer, out=fh)
    assert "s1-dense" not in trainer.calls and "s2-dense" in trainer.calls
    assert len(trainer.calls) == 11 and outcome.exit_code == 0 and outcome.skipped == ["s1-dense"]
    assert trainer.calls == sorted(trainer.calls, key=lambda n: runs[n].flops)  # smallest first
    log = out.read_text()
    assert "resuming at step 3/" in log and "skipped (finished)" in log and "12 done" in log

    rows, skipped = read_points(plan.results_csv)
    assert len(rows) == 12 and skipped == 0
    row = next(r for r in rows if r["name"] == "s4-lowrank-32")
    for col in ("structure", "fraction", "params", "params_non_embedding", "tokens", "flops", "ppl", "tokens_per_s",
                "wall_s"):
        assert row[col] != ""
    assert row["loss"] == pytest.approx(fake_loss(runs["s4-lowrank-32"]))
    data = json.loads(plan.results_json.read_text())
    assert {r["status"] for r in data["runs"]} == {"done"}

    # the table feeds `fit` directly: three series of four sizes, exponents in the order of the law
    from lowrank_lm.stats.fit import FitOptions, Series, fit_all

    result = fit_all(Series.from_rows(rows), FitOptions(n_bootstrap=50))
    alpha = {k: v.alpha for k, v in result.series.items()}
    assert alpha["lowrank-32"] > alpha["lowrank-63"] > alpha["dense"]
    assert alpha["dense"] == pytest.approx(0.30, abs=0.01)

    again = FakeTrainer()
    with out.open("w") as fh:
        assert execute(plan, again, out=fh).exit_code == 0
    assert again.calls == []  # nothing left to do


def test_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, FOUR_SIZES))
    order = sorted(plan.runs, key=lambda r: (r.flops, r.name))
    victim = order[4].name
    first = FakeTrainer(interrupt=victim)
    with open(os.devnull, "w") as sink, pytest.raises(KeyboardInterrupt):
        execute(plan, first, out=sink)
    assert first.calls == [r.name for r in order[:5]]
    assert run_state(next(r for r in plan.runs if r.name == victim)).status == "interrupted"
    rows, skipped = read_points(plan.results_csv)  # the table was written on the way out
    assert len(rows) == 4 and skipped == 0

    second = FakeTrainer()
    with open(os.devnull, "w") as sink:
        assert execute(plan, second, out=sink).exit_code == 0
    assert second.calls == [r.name for r in order[4:]]  # the interrupted run first, no finished run again


def test_failed_run_is_recorded_and_retried(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, FOUR_SIZES))
    bad = "s2-lowrank-63"
    with open(os.devnull, "w") as sink:
        outcome = execute(plan, FakeTrainer(fail=(bad,)), out=sink)
    assert outcome.failed == [bad] and outcome.exit_code == 1
    spec = next(r for r in plan.runs if r.name == bad)
    st = run_state(spec)
    assert st.status == "failed" and "exited with code 1" in st.error
    assert json.loads(plan.results_json.read_text())["runs"][4]["status"] == "failed"
    retry = FakeTrainer()
    with open(os.devnull, "w") as sink:
        assert execute(plan, retry, out=sink).exit_code == 0
    assert retry.calls == [bad] and not (spec.run_dir / FAILED_MARKER).exists()


def test_stop_on_error_and_shards(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, FOUR_SIZES))
    order = sorted(shard_runs(plan.runs, 1, 2), key=lambda r: (r.flops, r.name))
    trainer = FakeTrainer(fail=(order[0].name,))
    with open(os.devnull, "w") as sink:
        outcome = execute(plan, trainer, shard=(1, 2), stop_on_error=True, out=sink)
    assert trainer.calls == [order[0].name] and outcome.exit_code == 1
    other = FakeTrainer()
    with open(os.devnull, "w") as sink:
        execute(plan, other, shard=(0, 2), out=sink)
    assert sorted(other.calls) == sorted(r.name for r in shard_runs(plan.runs, 0, 2))


def test_a_run_dir_with_another_config_is_refused(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, FOUR_SIZES))
    spec = plan.runs[0]
    run_ownership(spec.run_dir).claim({"config.yaml"}, "")  # a folder an earlier sweep made
    from lowrank_lm.config import save_config

    save_config(load_config(CPU / "scale-1.yaml", ["train.tokens=999424"]), spec.config_path)
    with open(os.devnull, "w") as sink, pytest.raises(UserError, match=r"another config.*train\.tokens"):
        execute(plan, FakeTrainer(), out=sink)


def test_a_run_locked_by_another_process_is_left_alone(tmp_path):
    from lowrank_lm.train.rundir import LOCK

    assert LOCK_NAME == LOCK  # the sweep probes the trainer's own lock
    plan = load_sweep(write_sweep(tmp_path, FOUR_SIZES))
    spec = plan.runs[0]
    run_ownership(spec.run_dir).claim({LOCK_NAME}, "")  # a run folder a trainer is using
    fd = os.open(spec.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    # flock locks belong to open file descriptions: this one conflicts with the sweep's own probe
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert run_state(spec).status == "running"
        trainer = FakeTrainer()
        with open(os.devnull, "w") as sink:
            outcome = execute(plan, trainer, out=sink)
        assert spec.name not in trainer.calls and spec.name in outcome.skipped
    finally:
        os.close(fd)
    assert run_state(spec).status == "pending"


FAKE_TRAIN = """
import json, os, sys, yaml
assert sys.argv[1] == "train"
cfg = yaml.safe_load(open(sys.argv[2]))
out = cfg["train"]["out_dir"]
print("threads", os.environ.get("OMP_NUM_THREADS"), "malloc", os.environ.get("MALLOC_MMAP_THRESHOLD_"))
if "lowrank-32" in out:
    sys.exit(3)
json.dump(SUMMARY, open(os.path.join(out, "summary.json"), "w"))
"""


def test_the_local_executor_isolates_runs_and_logs(tmp_path):
    # sweep --executor local (the default): each run a job of submitit's local executor, the trainer started by
    # --launcher in its own process with the thread count and the malloc settings; a crash fails its run only
    from .ecosystem import cli

    path = write_sweep(tmp_path, FOUR_SIZES.replace("s2:", "#").replace("s3:", "#").replace("s4:", "#"))
    plan = load_sweep(path)
    script = tmp_path / "fake_train.py"
    # every run gets the same (complete) summary; JSON numbers and strings are Python literals
    script.write_text(FAKE_TRAIN.replace("SUMMARY", json.dumps(fake_summary(plan.runs[0], 3.0, 1.0).to_dict())))
    launcher = ["--launcher", f"{sys.executable} {script}", "--threads", "1"]
    smallest = min(plan.runs, key=lambda r: (r.flops, r.name))
    assert smallest.name == "s1-lowrank-32"  # submitted first, and it fails
    code, _, err = cli("sweep", str(path), *launcher, "--stop-on-error", "--quiet")
    assert code == 1 and err.count(": submitted as job") == 1, err
    assert "stopped at the first failed run (--stop-on-error): 2 runs not submitted" in err
    assert "    threads 1" not in err  # --quiet: the trainer's output only in its log
    code, _, err = cli("sweep", str(path), *launcher)
    assert code == 1, err
    assert err.count(": submitted as job") == 3 and err.count(": FAILED") == 1 and err.count(": done") == 2
    assert "    threads 1 malloc 33554432" in err  # the trainer's output, echoed while the command follows it
    spec = next(r for r in plan.runs if r.name == "s1-dense")
    log = (spec.run_dir / "train.log").read_text()
    assert "threads 1 malloc 33554432" in log and "fake_train.py train" in log
    failed = run_state(next(r for r in plan.runs if r.name == "s1-lowrank-32"))
    assert failed.status == "failed" and "exit status 3" in failed.error  # no retry on the local executor
    assert [r["name"] for r in json.loads(plan.results_json.read_text())["runs"] if r["status"] == "done"] == [
        r.name for r in plan.runs if "lowrank-32" not in r.name]


def _run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_cli_dry_run_status_and_errors(tmp_path, capsys):
    path = write_sweep(tmp_path, FOUR_SIZES)
    code, out, _ = _run_cli(capsys, "sweep", str(path), "--dry-run", "--shard", "0/2")
    assert code == 0 and "s4-lowrank-32" in out and "lowrank R=64 (31.2%)" in out and "shard 0/2" in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    code, out, _ = _run_cli(capsys, "sweep", str(path), "--status")
    assert code == 0 and "12 pending" in out and "no run has started" in out
    assert not (tmp_path / "runs").exists()  # nothing has run: --status writes no results file
    code, out, err = _run_cli(capsys, "sweep", str(path), "--shard", "2/2")
    assert code == 2 and "--shard" in err and err.count("\n") == 1
    code, out, err = _run_cli(capsys, "sweep", str(tmp_path / "missing.yaml"))
    assert code == 2 and "sweep file not found" in err


def test_dry_run_lists_the_learning_rates(tmp_path, capsys):
    code, out, _ = _run_cli(capsys, "sweep", str(write_sweep(tmp_path, LR_AXIS)), "--dry-run")
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "learning rates: 3 (1e-3, 2e-3, 5e-3)"
    assert lines[1].split()[:4] == ["run", "series", "FFN", "lr"]
    row = next(x.split() for x in lines if x.strip().startswith("a-dense-lr2e-3-seed2"))
    assert row[:4] == ["a-dense-lr2e-3-seed2", "dense-lr2e-3", "dense", "2e-3"]
    assert not (tmp_path / "runs").exists()
