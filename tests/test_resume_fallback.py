"""Resume takes the newest checkpoint that reads whole; a damaged one named explicitly, or --max-steps that
leaves nothing to do, is one line and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lowrank_lm.checkpoint import list_checkpoints, load_state
from lowrank_lm.config import save_config
from lowrank_lm.resolve import load_config
from lowrank_lm.train import run_training

from .conftest import tiny_run_config
from .ecosystem import cli


@pytest.fixture(scope="module")
def two_checkpoints(tiny_data, tmp_path_factory) -> Path:
    """A run stopped at step 8 with checkpoints at steps 4 and 8."""
    out = tmp_path_factory.mktemp("fallback") / "run"
    run_training(tiny_run_config(tiny_data, out), max_steps=8)
    assert [c.name for c in list_checkpoints(out)] == ["step-00000004", "step-00000008"]
    return out


def _truncate(ckpt: Path) -> str:
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return "model.safetensors cannot be read"


def _drop_key(ckpt: Path) -> str:
    state = json.loads((ckpt / "state.json").read_text())
    del state["loaders"]
    (ckpt / "state.json").write_text(json.dumps(state))
    return "lacks loaders"


def _other_config(ckpt: Path) -> str:
    cfg = load_config(ckpt / "config.yaml", ["model.hidden_dim=64"])
    save_config(cfg, ckpt / "config.yaml")
    return "the weights do not match its config.yaml"


DAMAGE = {"truncated weights": _truncate, "state missing a key": _drop_key, "config of another model": _other_config}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_skips_a_damaged_newest_checkpoint_and_says_why(two_checkpoints, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    reason = DAMAGE[damage](list_checkpoints(run)[-1])
    code, _, err = cli("train", str(run), "--max-steps", "5")
    assert code == 75, err  # stopped by --max-steps, resumable
    assert f"resume: skipping step-00000008: {run}/checkpoints/step-00000008" in err and reason in err
    assert "resuming at step 4" in err
    assert load_state(list_checkpoints(run)[0])["step"] == 4
    assert [c.name for c in list_checkpoints(run)] == ["step-00000004", "step-00000005", "step-00000008"]


def test_the_same_steps_from_the_fallback_as_without_the_damage(two_checkpoints, tmp_path):
    """Falling back to step 4 continues exactly as a run that only ever had step 4."""
    damaged, clean = tmp_path / "damaged", tmp_path / "clean"
    shutil.copytree(two_checkpoints, damaged)
    shutil.copytree(two_checkpoints, clean)
    _truncate(list_checkpoints(damaged)[-1])
    shutil.rmtree(list_checkpoints(clean)[-1])
    for run in (damaged, clean):
        assert cli("train", str(run), "--max-steps", "6")[0] == 75
    a = load_file(damaged / "checkpoints/step-00000006/model.safetensors")
    b = load_file(clean / "checkpoints/step-00000006/model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_no_checkpoint_that_reads_whole_is_one_line(two_checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    for ckpt in list_checkpoints(run):
        _truncate(ckpt)
    code, _, err = cli("train", str(run), "--max-steps", "10")
    assert code == 2 and err.count("\n") == 1
    assert "no checkpoint in" in err and "reads whole (newest step-00000008" in err and "--overwrite" in err
    assert [c.name for c in list_checkpoints(run)] == ["step-00000004", "step-00000008"]  # nothing deleted


@pytest.mark.parametrize("damage", ["state missing a key", "config of another model"])
def test_a_damaged_checkpoint_named_explicitly_is_one_line(two_checkpoints, tiny_data, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    ckpt = list_checkpoints(run)[-1]
    reason = DAMAGE[damage](ckpt)
    cfg = tiny_run_config(tiny_data, tmp_path / "new", f"train.resume={ckpt}")
    save_config(cfg, tmp_path / "resume.yaml")
    code, _, err = cli("train", str(tmp_path / "resume.yaml"), "--max-steps", "10")
    assert code == 2 and err.count("\n") == 1 and reason in err, err
    assert not list_checkpoints(tmp_path / "new")
    if damage == "config of another model":  # eval, generate, export read the same weights: one line too
        code, _, err = cli("eval", str(ckpt), "--device", "cpu", "--tokens", "256")
        assert code == 2 and err.count("\n") == 1 and reason in err and "other shapes for" in err, err


def test_max_steps_that_leaves_nothing_to_do_is_one_line(two_checkpoints, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    code, _, err = cli("train", str(run), "--max-steps", "8")
    assert code == 2 and err.count("\n") == 1 and "already at step 8" in err, err
    save_config(tiny_run_config(tiny_data, tmp_path / "fresh"), tmp_path / "fresh.yaml")
    code, _, err = cli("train", str(tmp_path / "fresh.yaml"), "--max-steps", "0")
    assert code == 2 and err.count("\n") == 1 and "--max-steps 0: give at least 1" in err, err
    assert not (tmp_path / "fresh").exists()  # refused before anything was written
    assert [c.name for c in list_checkpoints(run)] == ["step-00000004", "step-00000008"]
