"""The trainer on real text: exact resume, DDP equivalence, self-guided training, outputs and guards."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lowrank_lm
from lowrank_lm.checkpoint import list_checkpoints, load_model
from lowrank_lm.cli import main
from lowrank_lm.errors import UserError
from lowrank_lm.train import run_training
from lowrank_lm.train.metrics import read_metrics
from lowrank_lm.train.schedule import guide_alpha_at
from lowrank_lm.train.summary import RunSummary

from .conftest import tiny_run_config


@pytest.fixture()
def data_dir(tiny_data) -> Path:
    return tiny_data


def tiny(data_dir: Path, out: Path, *overrides: str):
    return tiny_run_config(data_dir, out, *overrides)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(list_checkpoints(run_dir)[-1] / "model.safetensors")


@pytest.mark.parametrize("stop", [3, 8])
def test_interrupted_run_resumes_to_the_identical_result(data_dir, tmp_path, stop):
    full = run_training(tiny(data_dir, tmp_path / "full", "model.ffn.kind=lowrank", "model.ffn.rank=8"))
    assert full.steps == 20
    cfg = tiny(data_dir, tmp_path / "cut", "model.ffn.kind=lowrank", "model.ffn.rank=8")
    part = run_training(cfg, max_steps=stop)
    assert not part.finished and part.steps == stop
    resumed = run_training(cfg)
    assert resumed.steps == 20
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")  # bitwise: same floats, no step lost/repeated
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.final_val_loss == full.final_val_loss


def test_outputs_of_a_run(data_dir, tmp_path):
    out = tmp_path / "run"
    summary = run_training(tiny(data_dir, out, "train.eval_interval=10"))
    assert RunSummary.read(out / "summary.json") == summary
    recorded = json.loads((out / "summary.json").read_text())["provenance"]
    assert recorded["package_version"] == lowrank_lm.__version__ and recorded["torch_version"] == torch.__version__
    assert recorded["data_manifest_sha256"] == hashlib.sha256((data_dir / "manifest.json").read_bytes()).hexdigest()
    assert recorded["command"] == sys.argv
    assert (out / "config.yaml").read_text().startswith(f"# written by lowrank-lm {lowrank_lm.__version__}")
    assert summary.tokens == 20 * 8 * 32
    recs = read_metrics(out / "metrics.jsonl")
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert {"tokens", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s"} <= steps[0].keys()
    assert steps[0]["mfu"] == "unknown"  # CPU: not in the peak-FLOPs table
    assert [r["step"] for r in recs if "val_loss" in r] == [10, 20]
    assert (out / "config.yaml").is_file() and (out / "tokenizer.json").is_file()
    assert any((out / "events").iterdir())  # TensorBoard
    assert len(list_checkpoints(out)) == 5  # every 4 steps, keep 10
    assert math.isclose(summary.final_val_ppl, math.exp(summary.final_val_loss), rel_tol=1e-9)


def test_eval_command_prints_json(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    summary = run_training(tiny(data_dir, out))
    with pytest.raises(SystemExit) as code:
        main(["eval", str(out), "--json", "--tokens", "2048", "--precision", "fp32", "--device", "cpu"])
    assert code.value.code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == 2048
    assert res["loss"] == pytest.approx(summary.final_val_loss, rel=1e-6)
    assert res["ppl"] == pytest.approx(math.exp(res["loss"]))


def test_finished_run_is_not_overwritten_without_asking(data_dir, tmp_path):
    out = tmp_path / "run"
    run_training(tiny(data_dir, out, "train.tokens=1024"))
    with pytest.raises(UserError, match="finished run; pass --overwrite"):
        run_training(tiny(data_dir, out, "train.tokens=1024"))
    (out / "notes.txt").write_text("mine")
    again = run_training(tiny(data_dir, out, "train.tokens=1024"), overwrite=True)
    assert again.steps == 4
    assert (out / "notes.txt").read_text() == "mine"  # never deletes what it did not create


def test_checkpoint_from_another_model_is_refused(data_dir, tmp_path):
    out = tmp_path / "run"
    run_training(tiny(data_dir, out), max_steps=4)
    with pytest.raises(UserError, match="another model config"):
        run_training(tiny(data_dir, out, "model.hidden_dim=64"))


def test_non_finite_steps_are_skipped_then_stop_the_run(data_dir, tmp_path, monkeypatch):
    import lowrank_lm.train.loop as loop

    real = loop.forward_backward
    calls = {"n": 0}

    def poisoned(model, batches, device, precision):
        calls["n"] += 1
        loss = real(model, batches, device, precision)
        if calls["n"] in (3, 9, 10, 11):  # one isolated bad step, then three in a row
            for p in model.parameters():
                p.grad.fill_(float("nan"))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(loop, "forward_backward", poisoned)
    closed = []  # the failed run's metrics file is closed, not left for the garbage collector
    monkeypatch.setattr(loop.MetricsLogger, "close", lambda self: closed.append(self._file.close()))
    out = tmp_path / "run"
    with pytest.raises(UserError, match="3 non-finite steps in a row at step 11"):
        run_training(tiny(data_dir, out, "train.max_bad_steps=3"))
    assert len(closed) == 1
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs if r.get("skipped")] == [3, 9, 10, 11]
    model, _, ckpt = load_model(out)
    assert ckpt.name == "step-00000008"  # the last good checkpoint stays
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_self_guided_training_follows_its_schedule_and_ends_structured(data_dir, tmp_path):
    sg = ["model.ffn.kind=lowrank", "model.ffn.rank=8", "train.self_guided.enabled=true",
          "train.self_guided.ratio=0.5", "train.self_guided.mode=fixedflop"]
    out = tmp_path / "sgt"
    cut = run_training(tiny(data_dir, out, *sg), max_steps=6)  # stop mid-guidance, resume below
    assert cut.steps == 6
    assert any(k.endswith(".guide") for k in final_weights(out))
    summary = run_training(tiny(data_dir, out, *sg))
    assert summary.steps == 30 and summary.guided_steps == 10  # 20 unique steps + 10 replayed
    alphas = {r["step"]: r["guide_alpha"] for r in read_metrics(out / "metrics.jsonl") if "guide_alpha" in r}
    assert sorted(alphas) == list(range(1, 11))
    for step, alpha in alphas.items():
        assert alpha == pytest.approx(guide_alpha_at(step - 1, 10, "cosine"))
    weights = final_weights(out)
    assert not any("guide" in k for k in weights)  # the guide is gone: exactly the structured model
    model, _, _ = load_model(out)
    assert list(model.structured_layers()) and not any(hasattr(m, "guide") for m in model.structured_layers())
    # the guide ran on about half of the guided tokens (reduce_flop: mean alpha 0.55); FLOPs reported against dense
    every_token = 10 * 256 * sum(6 * m.in_features * m.out_features for m in model.structured_layers())
    assert 0.3 < summary.guide_flops / every_token < 0.8
    assert 0.5 < summary.flop_ratio_to_dense < 1.5


def test_tiny_model_learns_far_below_the_unigram_baseline(data_dir, tmp_path):
    from lowrank_lm.data import unigram_perplexity

    unigram_ppl = unigram_perplexity(data_dir)
    assert 100 < unigram_ppl < 512  # a real distribution over 512 ids: far from uniform, far from trivial
    summary = run_training(tiny(data_dir, tmp_path / "learn", "train.tokens=200000", "model.hidden_dim=64",
                                "train.global_batch_size=16", "train.micro_batch_size=16",
                                "train.checkpoint_interval=1000", "train.log_interval=50"))
    assert summary.final_val_ppl < 0.6 * unigram_ppl, (summary.final_val_ppl, unigram_ppl)
