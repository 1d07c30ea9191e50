"""One real sweep, end to end: ``lowrank-lm sweep`` trains two tiny runs with the real trainer, each in its own
process (the default runner), and the results table holds what their summary.json files say.

The other sweep tests use a fake trainer (fast, and able to fake a scaling law); this one checks the contract
between the real trainer and the sweep: the run folders, the typed summary and the table built from it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lowrank_lm.stats.table import read_points
from lowrank_lm.train.summary import RunSummary

from .ecosystem import cli

CPU = Path(__file__).resolve().parents[1] / "configs" / "cpu"
TOKENS = 2560  # 10 steps of 8 x 32 tokens per run


def write_sweep(tmp_path: Path, data_dir: Path) -> Path:
    overrides = ["model.vocab_size=512", "model.seq_len=32", "model.num_layers=2", "model.num_q_heads=2",
                 f"data.dir={data_dir}", "data.tokenizer=bpe-512", "data.val_tokens=8192", "data.max_tokens=120000",
                 "train.precision=fp32", "train.global_batch_size=8", "train.eval_tokens=1024", "train.device=cpu",
                 "train.log_interval=5", "train.checkpoint_interval=1000"]
    path = tmp_path / "real.yaml"
    path.write_text(f"name: real-tiny\nout_dir: {tmp_path / 'runs'}\nbase: {CPU / 'tiny.yaml'}\n"
                    f"overrides: [{', '.join(overrides)}]\n"
                    "sizes:\n  s1: {overrides: [model.hidden_dim=32]}\n"
                    "structures:\n  dense: {}\n  lowrank: {fractions: [0.5]}\n"
                    f"budgets: {{tokens: [{TOKENS}]}}\n")
    return path


def test_a_real_tiny_sweep_trains_both_runs_and_tabulates_their_summaries(tmp_path, tiny_data):
    sweep = write_sweep(tmp_path, tiny_data)
    code, out, err = cli("sweep", str(sweep), "--threads", "1", "--quiet")
    assert code == 0, (out + err)[-3000:]
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and p.name != "jobs")  # jobs: submitit's
    assert [p.name for p in runs] == ["s1-dense", "s1-lowrank-50"]
    rows, skipped = read_points(tmp_path / "runs" / "results.csv")
    assert skipped == 0 and sorted(r["name"] for r in rows) == ["s1-dense", "s1-lowrank-50"]
    for row in rows:
        summary = RunSummary.read(tmp_path / "runs" / row["name"] / "summary.json")
        assert summary.steps == 10 and summary.tokens == TOKENS
        assert summary.structure == {"s1-dense": "dense", "s1-lowrank-50": "lowrank"}[row["name"]]
        assert summary.provenance is not None and summary.provenance.command[-2:] == [
            "train", str(tmp_path / "runs" / row["name"] / "config.yaml")]  # trained by the sweep's child process
        assert float(row["loss"]) == pytest.approx(summary.final_val_loss, rel=1e-9)
        assert float(row["ppl"]) == pytest.approx(summary.final_val_ppl, rel=1e-9)
        assert float(row["flops"]) == pytest.approx(summary.train_flops, rel=1e-9)
        assert int(float(row["tokens"])) == summary.tokens
    dense, lowrank = (RunSummary.read(p / "summary.json") for p in runs)
    assert lowrank.params_ffn < dense.params_ffn  # block 1 is structured (block 0 stays dense)
    # everything finished: a second call trains nothing
    code, out, err = cli("sweep", str(sweep), "--threads", "1", "--quiet")
    assert code == 0 and "skipped (finished)" in out + err and "2 runs, 2 done" in out + err, (code, out, err)
