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
from lowrank_lm.reliability import compare_runs, run_trial, train_subprocess
from lowrank_lm.resolve import load_config
from lowrank_lm.train import run_training
from lowrank_lm.train.rundir import RunDir

from .conftest import small_config, tiny_run_config
from .ecosystem import cli


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
    load_state(ckpt)  # state.json is there: the pickle beside it is never opened
    for name in ("state.json", "state.safetensors"):  # the layout of an earlier release: refused, not read
        (ckpt / name).unlink()
    with pytest.raises(UserError, match=r"state is a pickle.*lowrank-lm convert-checkpoint"):
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
    import lowrank_lm.checkpoint.single as checkpoint

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
    assert run_training(cfg).steps == 20  # and the run resumes from it


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


@pytest.fixture(scope="module")
def long_clean(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """A config of 160 steps (long enough for a signal to land mid-run) and its uninterrupted run."""
    root = tmp_path_factory.mktemp("long")
    save_config(tiny_run_config(tiny_data, root / "clean", "train.tokens=40960", "train.checkpoint_interval=50"),
                root / "clean.yaml")
    assert train_subprocess(root / "clean.yaml") == 0
    return root / "clean.yaml", root / "clean"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_the_current_step_exits_75_and_resumes_exactly(long_clean, tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    from lowrank_lm.errors import EXIT_STOPPED
    from lowrank_lm.reliability import compare_runs
    from lowrank_lm.train.metrics import read_metrics

    cfg = load_config(long_clean[0], [f"train.out_dir={tmp_path / 'run'}"])
    save_config(cfg, tmp_path / "run.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lowrank_lm", "train", str(tmp_path / "run.yaml")], env=env,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(read_metrics(metrics)) >= 5):
        time.sleep(0.02)
    proc.send_signal(getattr(signal, sig))  # Ctrl-C in a terminal is SIGINT
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err
    step = load_state(list_checkpoints(tmp_path / "run")[-1])["step"]
    assert 5 <= step < 160  # a checkpoint of the step the signal arrived in
    assert f"received {sig}: checkpoint at step {step}, exiting" in err
    assert err.splitlines()[-1] == (f"stopped at step {step} of 160 ({sig}), checkpoint written; continue with: "
                                    f"lowrank-lm train {tmp_path / 'run'}")
    assert not (tmp_path / "run" / "summary.json").exists()
    assert train_subprocess(tmp_path / "run.yaml") == 0
    assert compare_runs(long_clean[1], tmp_path / "run") == []


def test_a_second_ctrl_c_aborts_at_once_unless_it_is_the_same_press(tiny_data, tmp_path):
    import signal

    from lowrank_lm.train.loop import Trainer

    trainer = Trainer(tiny_run_config(tiny_data, tmp_path / "run"))
    previous = trainer._catch_stop_signals()
    try:
        handler = signal.getsignal(signal.SIGINT)
        handler(signal.SIGINT, None)
        assert trainer._stop_signal == "SIGINT"  # the first Ctrl-C asks for a checkpoint and a clean stop
        handler(signal.SIGINT, None)  # within a second: torchrun's copy of the same press, ignored
        trainer._stop_time -= 2.0  # as if the user pressed again two seconds later
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def test_max_steps_exits_75_naming_the_command_and_train_run_dir_finishes_the_run(reference, tmp_path):
    config, ref_dir = reference
    save_config(load_config(config, [f"train.out_dir={tmp_path / 'run'}"]), tmp_path / "run.yaml")
    code, _, err = cli("train", str(tmp_path / "run.yaml"), "--max-steps", "7")
    assert code == 75, err
    assert err.splitlines()[-1] == ("stopped at step 7 of 20 (--max-steps), checkpoint written; continue with: "
                                    f"lowrank-lm train {tmp_path / 'run'}")
    (tmp_path / "run").rename(tmp_path / "moved")  # the folder is the run: its config.yaml, wherever it is
    code, _, err = cli("train", str(tmp_path / "moved"))
    assert code == 0, err
    assert "resuming at step 7" in err
    assert compare_runs(ref_dir, tmp_path / "moved") == []
    code, _, err = cli("train", str(tmp_path), "train.lr=1")
    assert code == 2 and err.count("\n") == 1 and "without config.yaml" in err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_user_error_on_rank_0_ends_both_ranks_with_one_line_without_torchrun(reference):
    """srun / mpirun start the ranks without torchrun's agent: nobody else would end rank 1."""
    import subprocess
    import sys

    config, _ = reference  # a finished run: rank 0 refuses it while it prepares the out_dir
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        procs.append(subprocess.Popen([sys.executable, "-m", "lowrank_lm", "train", str(config)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=60) for p in procs]  # promptly: within 60 s, not the 30-minute timeout
    assert [p.returncode for p in procs] == [2, 2], outs
    rank0, rank1 = outs[0][1], outs[1][1]
    assert rank0.count("\n") == 1 and rank0.startswith("lowrank-lm train: error: ") and \
        "holds a finished run; pass --overwrite" in rank0
    assert rank1 == ""  # said once, by rank 0


@pytest.fixture(scope="module")
def ddp_reference(reference, tmp_path_factory) -> tuple[Path, Path]:
    """The reference config run uninterrupted by two DDP processes."""
    root = tmp_path_factory.mktemp("ddp")
    save_config(load_config(reference[0], [f"train.out_dir={root / 'run'}"]), root / "config.yaml")
    assert train_subprocess(root / "config.yaml", nproc=2) == 0
    return root / "config.yaml", root / "run"


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_the_same_command_resumes_to_the_uninterrupted_weights(ddp_reference,
                                                                                          tmp_path):
    config, ref_dir = ddp_reference
    result = run_trial(config, ref_dir, "train.step:5@1", tmp_path, nproc=2)  # rank 1 dies after step 5
    assert result.kills == 1 and result.resumes == 1
    assert result.unreadable_checkpoints == 0
    assert result.mismatches == []  # losses, weights, AdamW state bit for bit (gloo's a + b is deterministic)


def test_checkpoint_minutes_checkpoint_by_wall_clock_and_off_means_the_end_only(tiny_data, tmp_path):
    every_step = tiny_run_config(tiny_data, tmp_path / "clock", "train.checkpoint_interval=null",
                                 "train.checkpoint_minutes=1e-9", "train.keep_checkpoints=100", "train.tokens=2560")
    run_training(every_step)  # a step takes longer than 60 ns: each one is due
    assert [load_state(c)["step"] for c in list_checkpoints(tmp_path / "clock")] == list(range(1, 11))
    end_only = tiny_run_config(tiny_data, tmp_path / "off", "train.checkpoint_interval=null",
                               "train.checkpoint_minutes=null", "train.keep_checkpoints=100", "train.tokens=2560")
    run_training(end_only)
    assert [c.name for c in list_checkpoints(tmp_path / "off")] == ["step-00000010"]


def test_the_continue_command_follows_the_launcher(monkeypatch):
    from lowrank_lm.commands.train import continue_command

    for var in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert continue_command("runs/a b") == "lowrank-lm train 'runs/a b'"
    monkeypatch.setenv("WORLD_SIZE", "4")  # started by srun or mpirun
    assert continue_command("runs/x") == "this job's launcher (srun, mpirun) running lowrank-lm train runs/x"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun, 2 nodes x 2 processes
    assert continue_command("runs/x") == ("torchrun --nproc_per_node=2 --nnodes=2 (and this job's rendezvous "
                                          "options) -m lowrank_lm train runs/x")
