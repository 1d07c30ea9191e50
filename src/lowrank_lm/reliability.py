"""Fault-injection trials: kill a training process with SIGKILL, resume it, and compare with a clean run.

A trial runs ``lowrank-lm train CONFIG`` in a subprocess with ``LOWRANK_LM_CRASH`` set (see
:mod:`lowrank_lm.faults`), checks that every checkpoint left behind is readable, resumes with
``train.resume=auto`` until the run finishes, and compares the loss history, the final weights and the
final optimiser state with an uninterrupted reference run, bit for bit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from lowrank_lm.checkpoint import list_checkpoints, load_model, load_state
from lowrank_lm.config import load_config, save_config
from lowrank_lm.train.metrics import read_metrics

CRASH_POINTS = ("train.step", "checkpoint.weights", "checkpoint.state", "checkpoint.rename", "checkpoint.done")


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
        return not self.mismatches and self.unreadable_checkpoints == 0


def train_subprocess(config: Path, crash: str | None = None, timeout: float = 600) -> int:
    """Run the trainer in a fresh process (one thread); returns its exit code (-9 when killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOWRANK_LM_CRASH", None)
    if crash:
        env["LOWRANK_LM_CRASH"] = crash
    proc = subprocess.run([sys.executable, "-m", "lowrank_lm", "train", str(config)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode not in (0, -9):
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
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def compare_runs(reference: Path, run: Path) -> list[str]:
    """Differences between two finished runs: losses, final weights, final optimiser state (exact)."""
    problems = []
    if _losses(reference) != _losses(run):
        problems.append("loss history differs")
    ref_ckpt, ckpt = list_checkpoints(reference)[-1], list_checkpoints(run)[-1]
    if ref_ckpt.name != ckpt.name:
        problems.append(f"final checkpoint {ckpt.name} != {ref_ckpt.name}")
    a, b = load_file(ref_ckpt / "model.safetensors"), load_file(ckpt / "model.safetensors")
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        problems.append("final weights differ")
    sa, sb = load_state(ref_ckpt)["optimizer"]["state"], load_state(ckpt)["optimizer"]["state"]
    for k in sa:
        for name, value in sa[k].items():
            if not torch.equal(value, sb[k][name]):
                problems.append(f"optimizer state {k}.{name} differs")
    return problems


def run_trial(config: Path, reference: Path, crash: str, workdir: Path, max_resumes: int = 5) -> TrialResult:
    """Kill a run at ``crash`` (point:count), resume until finished, compare with ``reference``."""
    cfg = load_config(config)
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg.train.out_dir = str(run_dir)
    cfg.train.resume = "auto"
    path = workdir / "trial.yaml"
    save_config(cfg, path)
    result = TrialResult(crash=crash)
    code = train_subprocess(path, crash)
    result.kills += code == -9
    result.unreadable_checkpoints += _readable(run_dir)
    while not (run_dir / "summary.json").is_file():
        if result.resumes >= max_resumes:
            result.mismatches.append("run did not finish")
            return result
        train_subprocess(path)
        result.resumes += 1
        result.unreadable_checkpoints += _readable(run_dir)
    result.mismatches += compare_runs(reference, run_dir)
    return result
