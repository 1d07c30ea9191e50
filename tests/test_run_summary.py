"""Typed run records: RunSummary's JSON form, old summaries, provenance, and the run folder's saved config."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowrank_lm
from lowrank_lm.errors import UserError
from lowrank_lm.provenance import Provenance, collect_provenance
from lowrank_lm.resolve import load_config
from lowrank_lm.train.rundir import RunDir
from lowrank_lm.train.summary import RunSummary

# summary.json as the trainer wrote it before provenance was recorded (a LowRank run of the first release)
OLD_SUMMARY = {
    "name": "lowrank-32", "structure": "lowrank", "params": 36224, "params_non_embedding": 19840,
    "params_ffn": 10752, "tokens": 5120, "unique_tokens": 5120, "steps": 20, "train_flops": 1.211e9,
    "train_s": 0.2, "wall_s": 1.5, "tokens_per_s": 25600.0, "skipped_steps": 0, "peak_memory_mb": 471.0,
    "device": "cpu", "world_size": 1, "precision": "fp32", "final_val_loss": 5.6677, "final_val_ppl": 289.38,
    "val_tokens": 2048,
}
ROOT = Path(__file__).resolve().parents[1]


def test_an_old_summary_reads_without_provenance(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({**OLD_SUMMARY, "written_by_a_newer_version": 1}))
    s = RunSummary.read(path)
    assert (s.name, s.steps, s.final_val_loss, s.train_flops) == ("lowrank-32", 20, 5.6677, 1.211e9)
    assert s.provenance is None and s.guided_steps is None
    assert s.to_dict() == OLD_SUMMARY  # the same keys back: optional fields only when set, unknown ones dropped


def test_a_summary_lacking_a_field_names_it(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({k: v for k, v in OLD_SUMMARY.items() if k not in ("final_val_loss", "tokens")}))
    with pytest.raises(UserError, match=r"summary.json lacks tokens, final_val_loss \(written by another version"):
        RunSummary.read(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match=r"cannot read .*summary\.json"):
        RunSummary.read(path)


def test_summary_round_trips_with_provenance(tmp_path):
    prov = Provenance(package_version="0.1.0", torch_version="2.13.0", git_commit="ab" * 20, git_dirty=True,
                      command=["lowrank-lm", "train", "configs/cpu/tiny.yaml"], data_manifest_sha256="cd" * 32)
    s = RunSummary.from_dict(OLD_SUMMARY).replace(guided_steps=10, guide_flops=2.5e8, flop_ratio_to_dense=0.9,
                                                  provenance=prov)
    s.write(tmp_path / "summary.json")
    raw = json.loads((tmp_path / "summary.json").read_text())
    assert raw["provenance"]["git_commit"] == "ab" * 20 and raw["guided_steps"] == 10
    assert RunSummary.read(tmp_path / "summary.json") == s
    assert not list(tmp_path.glob("*.tmp"))


def test_provenance_of_this_process(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": 1}\n')
    p = collect_provenance(tmp_path)
    assert p.package_version == lowrank_lm.__version__ and p.torch_version == torch.__version__
    assert p.command == sys.argv
    assert p.data_manifest_sha256 == hashlib.sha256(b'{"format": 1}\n').hexdigest()
    assert collect_provenance(tmp_path / "missing").data_manifest_sha256 is None
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0 and Path(lowrank_lm.__file__).resolve().is_relative_to(ROOT):
        assert p.git_commit == head.stdout.strip() and isinstance(p.git_dirty, bool)


def test_saved_config_carries_provenance_and_still_loads(tmp_path):
    cfg = load_config("configs/cpu/tiny.yaml")
    prov = Provenance(package_version="0.1.0", torch_version="2.13.0", git_commit=None, git_dirty=None,
                      command=["lowrank-lm", "train", "my config.yaml"], data_manifest_sha256=None)
    run = RunDir(tmp_path)
    run.write_config(cfg, prov)
    text = run.config.read_text()
    assert text.splitlines()[:2] == ["# written by lowrank-lm 0.1.0, torch 2.13.0, git not a git checkout",
                                     "# command: lowrank-lm train 'my config.yaml'"]
    assert load_config(run.config) == cfg
