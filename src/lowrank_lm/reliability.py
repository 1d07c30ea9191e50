"""Fault-injection trials: kill a training process with SIGKILL, resume it, and compare with a clean run.

A trial runs ``lowrank-lm train CONFIG`` in a subprocess — or ``torchrun`` with several processes, one of
which is killed — with ``LOWRANK_LM_CRASH`` set (see :mod:`lowrank_lm.faults`), checks that every checkpoint
left behind is readable, runs the same command again until the run finishes, and compares the loss
history, the final weights and the final optimiser state with an uninterrupted reference run of the same
world size, bit for bit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lowrank_lm.checkpoint import is_sharded, list_checkpoints, load_model, load_state, read_sharded_tensors
from lowrank_lm.config import save_config
from lowrank_lm.resolve import load_config
from lowrank_lm.train.metrics import read_metrics
from lowrank_lm.train.rundir import RunDir

CRASH_POINTS = ("train.step", "checkpoint.weights", "checkpoint.state", "checkpoint.rename", "checkpoint.done")
KILLED = -9
"""What :func:`train_subprocess` returns when a process of the run died of SIGKILL."""


@dataclass
class TrialResult:
    """What one kill-and-resume trial saw."""

    crash: str
    kills: int = 0
    resumes: int = 0
    unreadable_checkpoints: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every checkpoint read back and the resumed run matched the uninterrupted one."""
        return not self.mismatches and self.unreadable_checkpoints == 0


def train_command(config: Path, nproc: int = 1) -> list[str]:
    """``python -m lowrank_lm train CONFIG``, under torchrun (a free port of its own) for several processes."""
    if nproc == 1:
        return [sys.executable, "-m", "lowrank_lm", "train", str(config)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "lowrank_lm", "train", str(config)]


def train_subprocess(config: Path, crash: str | None = None, timeout: float = 600, nproc: int = 1) -> int:
    """Run the trainer in fresh processes (one thread each); returns the exit code, :data:`KILLED` when a
    process was killed (itself, or torchrun's teardown of a job one of whose processes was)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOWRANK_LM_CRASH", None)
    if crash:
        env["LOWRANK_LM_CRASH"] = crash
    proc = subprocess.run(train_command(config, nproc), env=env, capture_output=True, text=True, timeout=timeout)
    # torchrun exits 1 when a worker died and names the signal in its failure report
    if proc.returncode == KILLED or (nproc > 1 and proc.returncode == 1 and "Signal 9 (SIGKILL)" in proc.stderr):
        return KILLED
    if proc.returncode != 0:
        raise RuntimeError(f"trainer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.returncode


def _readable(run_dir: Path) -> int:
    """Number of complete checkpoints that cannot be loaded (weights or state)."""
    bad = 0
    for ckpt in list_checkpoints(run_dir):
        try:
            load_model(ckpt)
            load_state(ckpt)
        except Exception:
            bad += 1
    return bad


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(RunDir(run_dir).metrics) if "loss" in r]


def final_state(ckpt: Path) -> dict[str, Any]:
    """Weights and optimiser state of a checkpoint as full tensors, whichever format it has (a sharded one
    flat, keyed ``model.NAME`` and ``optimizer.NAME.KEY``)."""
    if is_sharded(ckpt):
        return read_sharded_tensors(ckpt)
    return {"model": load_file(ckpt / "model.safetensors"), "optimizer": load_state(ckpt)["optimizer"]["state"]}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def compare_runs(reference: Path, run: Path) -> list[str]:
    """Differences between two finished runs: losses, final weights, final optimiser state (exact)."""
    problems = []
    if _losses(reference) != _losses(run):
        problems.append("loss history differs")
    ref_ckpt, ckpt = list_checkpoints(reference)[-1], list_checkpoints(run)[-1]
    if ref_ckpt.name != ckpt.name:
        problems.append(f"final checkpoint {ckpt.name} != {ref_ckpt.name}")
    a, b = _flat(final_state(ref_ckpt)), _flat(final_state(ckpt))
    if a.keys() != b.keys():
        problems.append(f"final state keys differ: {sorted(a.keys() ^ b.keys())[:4]}")
    for k in sorted(a.keys() & b.keys()):
        same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
        if not same:
            problems.append(f"final {k} differs")
    return problems


def run_trial(config: Path, reference: Path, crash: str, workdir: Path, max_resumes: int = 5,
              nproc: int = 1) -> TrialResult:
    """Kill a run at ``crash`` (point:count[@rank]), run it again until finished, compare with ``reference``."""
    cfg = load_config(config)
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg.train.out_dir = str(run_dir)
    cfg.train.resume = "auto"
    path = workdir / "trial.yaml"
    save_config(cfg, path)
    result = TrialResult(crash=crash)
    code = train_subprocess(path, crash, nproc=nproc)
    result.kills += code == KILLED
    result.unreadable_checkpoints += _readable(run_dir)
    while not RunDir(run_dir).summary.is_file():
        if result.resumes >= max_resumes:
            result.mismatches.append("run did not finish")
            return result
        train_subprocess(path, nproc=nproc)
        result.resumes += 1
        result.unreadable_checkpoints += _readable(run_dir)
    result.mismatches += compare_runs(reference, run_dir)
    return result
