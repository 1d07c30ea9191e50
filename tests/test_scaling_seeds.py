"""Sweep files with a seeds axis and FLOP budgets (IsoFLOP designs), and the IsoFLOP presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowrank_lm.errors import UserError
from lowrank_lm.launch.execute import RunState, result_row
from lowrank_lm.launch.sweep import load_sweep

from .test_scaling_sweep import write_sweep

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "configs" / "cpu"
EMBEDDED_TRAIN_TOKENS = 1_576_672
"""Training tokens of the embedded corpus with bpe-8192 (its manifest), for the epochs of the CPU preset."""


ISOFLOP = f"""
sizes:
  s1: {{config: {CPU / 'scale-1.yaml'}, flops: [1.0e12]}}
  s2: {CPU / 'scale-2.yaml'}
  s3: {{config: {CPU / 'scale-3.yaml'}, flops: [3.0e12]}}
structures:
  dense: {{}}
  lowrank: {{fractions: [0.32]}}
budgets: {{flops: [1.0e12, 3.0e12]}}
seeds: [7, 8]
"""


def test_seeds_and_flop_budgets_expand_into_runs(tmp_path):
    plan = load_sweep(write_sweep(tmp_path, ISOFLOP))
    # (s1 at 1e12, s2 at both, s3 at 3e12) x 2 structures x 2 seeds
    assert len(plan.runs) == 4 * 2 * 2
    run = next(r for r in plan.runs if r.name == "s2-lowrank-32-C3e12-seed8")
    assert run.series == "lowrank-32"  # the budget is not part of an IsoFLOP series: one surface per structure
    assert run.budget == "C3e12" and run.seed == 8 and run.cfg.train.seed == 8
    assert run.row()["seed"] == 8 and result_row(run, RunState("pending"))["seed"] == 8
    for r in plan.runs:  # every run spends its budget, up to one step of tokens
        budget = 1e12 if r.budget == "C1e12" else 3e12
        per_step = r.cfg.train.global_batch_size * r.cfg.model.seq_len
        assert budget - r.flops < r.flops / r.tokens * per_step and r.flops <= budget * 1.0001
    dense = {r.size: r.tokens for r in plan.runs if r.structure == "dense" and r.budget == "C3e12"}
    lowrank = {r.size: r.tokens for r in plan.runs if r.structure == "lowrank" and r.budget == "C3e12"}
    assert dense["s2"] < lowrank["s2"]  # the same compute buys the cheaper model more tokens
    assert {r.size for r in plan.runs if r.budget == "C1e12"} == {"s1", "s2"}


def test_one_seed_keeps_run_names_and_no_seeds_keeps_the_config_seed(tmp_path):
    body = f"sizes: {{s1: {CPU / 'scale-1.yaml'}}}\nstructures: {{dense: {{}}}}\nbudgets: {{tokens: [40960]}}\n"
    (r,) = load_sweep(write_sweep(tmp_path, body)).runs
    assert r.name == "s1-dense" and r.seed == r.cfg.train.seed == 1005  # tiny.yaml's seed
    (r,) = load_sweep(write_sweep(tmp_path, body + "seeds: [3]\n")).runs
    assert r.name == "s1-dense" and r.cfg.train.seed == 3


@pytest.mark.parametrize("extra, message", [
    ("seeds: [1, 1]\n", "seeds has a repeated value"),
    ("seeds: []\n", "seeds must be a non-empty list of whole numbers"),
    ("seeds: [one]\n", r"seeds\[0\]: expected int, got 'one'"),  # typed by the config's converter
    ("budgets: {flops: [1.0e12]}\nmatch_dense_tokens: true\n", "match_dense_tokens does not apply to FLOP budgets"),
    ("budgets: {flops: [1.0e12]}\nsizes: {s1: {config: X, flops: [2.0e12]}}\n", "is not one of budgets.flops"),
    ("budgets: {tokens: [40960]}\nsizes: {s1: {config: X, flops: [2.0e12]}}\n", "applies to FLOP budgets only"),
])
def test_sweep_file_errors(tmp_path, extra, message):
    base = f"sizes: {{s1: {CPU / 'scale-1.yaml'}}}\nstructures: {{dense: {{}}}}\n"
    body = extra.replace("X", str(CPU / "scale-1.yaml"))
    if "sizes:" not in body:
        body = base + body
    else:
        body = "structures: {dense: {}}\n" + body
    with pytest.raises(UserError, match=message):
        load_sweep(write_sweep(tmp_path, body))


def test_isoflop_cpu_preset_fits_the_corpus_and_brackets_sizes():
    plan = load_sweep(ROOT / "configs" / "sweeps" / "isoflop-cpu.yaml")
    assert len(plan.runs) == 48
    assert {r.series for r in plan.runs} == {"dense", "lowrank-32"}
    assert max(r.tokens for r in plan.runs) / EMBEDDED_TRAIN_TOKENS <= 4.0  # at most 4 epochs of repetition
    for budget in {r.budget for r in plan.runs}:
        for structure in ("dense", "lowrank"):
            sizes = {r.size for r in plan.runs if r.budget == budget and r.structure == structure}
            assert len(sizes) == 4  # a parabola per budget with a residual degree of freedom
    assert sum(r.flops for r in plan.runs) == pytest.approx(1.63e15, rel=0.01)  # the sizing in the file's header
