"""Launches that agree: a partial distributed environment is one line, the process group gets
train.dist_timeout_minutes, and every rank resumes rank 0's choice of checkpoint."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from lowrank_lm.config import save_config
from lowrank_lm.resolve import load_config
from lowrank_lm.train import distributed

from .conftest import tiny_run_config
from .ecosystem import cli

LAUNCH = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def bare_env(monkeypatch):
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env, expect", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "RANK, WORLD_SIZE set but not MASTER_ADDR, MASTER_PORT"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "localhost"}, "WORLD_SIZE, MASTER_ADDR set but not RANK, MASTER_PORT"),
    ({"RANK": "one", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
     "must be whole numbers"),
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
     "do not describe a process of a job"),
])
def test_a_partial_launch_is_one_line(bare_env, tiny_data, tmp_path, env, expect):
    for name, value in env.items():
        bare_env.setenv(name, value)
    save_config(tiny_run_config(tiny_data, tmp_path / "run"), tmp_path / "run.yaml")
    for argv in (["train", str(tmp_path / "run.yaml")], ["eval", str(tmp_path / "run"), "--device", "cpu"]):
        code, _, err = cli(*argv)
        assert code == 2 and err.count("\n") == 1 and expect in err, (argv, err)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_master_variables_alone_leave_a_plain_process_alone(bare_env):
    bare_env.setenv("MASTER_ADDR", "localhost")  # a cluster's job script may export these for everything
    bare_env.setenv("MASTER_PORT", "29500")
    d = distributed.setup("cpu")
    assert (d.rank, d.world_size, d.launched) == (0, 1, False)


def test_the_process_group_gets_the_configured_timeout(bare_env):
    seen = {}
    bare_env.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}.items():
        bare_env.setenv(name, value)
    d = distributed.setup("cpu", timeout_minutes=7.5)
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=7.5)}
    assert (d.rank, d.world_size) == (0, 1)


def test_dist_timeout_has_a_documented_default_and_is_checked(capsys):
    assert load_config(None).train.dist_timeout_minutes == 120.0
    for bad in ("0", "-1", ".nan", ".inf"):
        code, _, err = cli("info", "configs/cpu/tiny.yaml", f"train.dist_timeout_minutes={bad}")
        assert code == 2 and err.count("\n") == 1 and "train.dist_timeout_minutes must be positive" in err, err


def _broadcast_worker(rank: int, store_path: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        import torch

        cpu = torch.device("cpu")
        # rank 1 sees other checkpoints (lagging shared storage): it must take rank 0's choice anyway
        chosen = distributed.broadcast_path(Path("runs/a/checkpoints/step-00000008") if rank == 0
                                            else Path("runs/a/checkpoints/step-00000004"), cpu)
        none = distributed.broadcast_path(None if rank == 0 else Path("x"), cpu)
        Path(results, f"rank{rank}").write_text(f"{chosen}|{none}")
    finally:
        dist.destroy_process_group()


def test_every_rank_takes_rank_0s_checkpoint(tmp_path):
    mp.spawn(_broadcast_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}").read_text() == "runs/a/checkpoints/step-00000008|None"
    assert not os.environ.get("RANK")
