"""Crashes, bad numbers, unsafe files: the run survives with nothing lost (short fault-injection variant).

The long variant with more seeds is `python scripts/fault_injection.py --trials 40` (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from lowrank_lm.checkpoint import list_checkpoints, load_model, load_state, save_checkpoint
from lowrank_lm.config import save_config
from lowrank_lm.errors import UserError
from lowrank_lm.reliability import run_trial, train_subprocess
from lowrank_lm.train import run_training
from lowrank_lm.train.rundir import RunDir

from .conftest import small_config, tiny_run_config


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted run in a subprocess (the same code path as the trials) and its config."""
    root = tmp_path_factory.mktemp("reference")
    cfg = tiny_run_config(tiny_data, root / "run", "model.ffn.kind=lowrank", "model.ffn.rank=8",
                          "train.log_interval=1", "train.checkpoint_interval=3", "train.keep_checkpoints=2")
    save_config(cfg, root / "config.yaml")
    assert train_subprocess(root / "config.yaml") == 0
    return root / "config.yaml", root / "run"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_killed_runs_resume_to_the_identical_result(reference, tmp_path, seed):
    config, ref_dir = reference
    rng = random.Random(seed)
    # one kill at a random training step, one inside a random phase of a checkpoint write
    crashes = [f"train.step:{rng.randint(1, 19)}",
               f"{rng.choice(['checkpoint.weights', 'checkpoint.state', 'checkpoint.rename'])}:{rng.randint(1, 6)}"]
    for crash in crashes:
        result = run_trial(config, ref_dir, crash, tmp_path)
        assert result.kills == 1, crash
        assert result.resumes >= 1
        assert result.unreadable_checkpoints == 0
        assert result.mismatches == [], (crash, result.mismatches)


def test_crafted_pickle_in_a_checkpoint_is_refused(tmp_path):
    cfg = small_config()
    from lowrank_lm.model import Transformer

    ckpt = save_checkpoint(tmp_path, 1, Transformer(cfg.model), cfg, {"step": 1})
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 1, "payload": Evil()}, ckpt / "state.pt")
    with pytest.raises(UserError, match="not a valid training state"):
        load_state(ckpt)
    assert not marker.exists()  # the pickled code never ran
    load_model(ckpt)  # the weights are safetensors: still loadable


def test_an_out_dir_in_use_is_refused(tmp_path):
    first = RunDir(tmp_path / "run")
    first.acquire()
    try:
        with pytest.raises(UserError, match="in use by another running training process"):
            RunDir(tmp_path / "run").acquire()
    finally:
        first.release()
    RunDir(tmp_path / "run").acquire()  # free again once released


def test_failed_checkpoint_write_keeps_the_previous_one(tiny_data, tmp_path, monkeypatch):
    import lowrank_lm.checkpoint as checkpoint

    out = tmp_path / "run"
    cfg = tiny_run_config(tiny_data, out)
    run_training(cfg, max_steps=4)
    real = checkpoint.save_file

    def disk_full(tensors, path, *a, **k):
        real(tensors, path, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(UserError, match=r"No space left on device.*step-00000004 is intact"):
        run_training(cfg)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004"]
    assert not list((out / "checkpoints").glob(".tmp-*"))  # nothing half-written left
    load_model(out)
    assert load_state(list_checkpoints(out)[-1])["step"] == 4
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert run_training(cfg)["steps"] == 20  # and the run resumes from it


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["prepare.shard:2", "prepare.shard:5"])
def test_killed_prepare_reruns_to_byte_identical_shards(tmp_path, crash):
    import subprocess
    import sys

    def prepare(out: Path, crash: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != "LOWRANK_LM_CRASH"}
        if crash:
            env["LOWRANK_LM_CRASH"] = crash
        args = [sys.executable, "-m", "lowrank_lm", "prepare", "data.tokenizer=gpt2", "data.shard_tokens=20000",
                "data.val_tokens=30000", "data.num_workers=1", f"data.dir={out}", "--max-tokens", "150000", "--quiet"]
        return subprocess.run(args, env=env, capture_output=True, timeout=300).returncode

    def files(d: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}

    assert prepare(tmp_path / "clean", None) == 0
    assert prepare(tmp_path / "killed", crash) == -9
    assert not (tmp_path / "killed" / "manifest.json").exists()  # never a manifest over missing shards
    assert prepare(tmp_path / "killed", None) == 0
    clean, killed = files(tmp_path / "clean"), files(tmp_path / "killed")
    manifest_clean = json.loads(clean.pop("manifest.json"))
    manifest_killed = json.loads(killed.pop("manifest.json"))
    assert killed == clean  # shards and tokenizer byte-identical
    for m in (manifest_clean, manifest_killed):
        m.pop("created")
    assert manifest_killed == manifest_clean


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_resumes_exactly(tiny_data, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from lowrank_lm.reliability import compare_runs
    from lowrank_lm.train.metrics import read_metrics

    def config(name: str) -> Path:  # 160 steps: long enough for the signal to land mid-run
        save_config(tiny_run_config(tiny_data, tmp_path / name, "train.tokens=40960", "train.checkpoint_interval=50"),
                    tmp_path / f"{name}.yaml")
        return tmp_path / f"{name}.yaml"

    assert train_subprocess(config("clean")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lowrank_lm", "train", str(config("run"))], env=env,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(read_metrics(metrics)) >= 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    step = load_state(list_checkpoints(tmp_path / "run")[-1])["step"]
    assert 5 <= step < 160  # a checkpoint of the step the signal arrived in
    assert f"received SIGTERM: checkpoint at step {step}, exiting" in err
    assert not (tmp_path / "run" / "summary.json").exists()
    assert train_subprocess(tmp_path / "run.yaml") == 0
    assert compare_runs(tmp_path / "clean", tmp_path / "run") == []
