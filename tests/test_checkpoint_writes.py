"""A checkpoint write that fails (a full disk) ends in one line, exit 2, with the previous checkpoint intact,
whichever writer raises and however it says so; and on a real full file system (a small tmpfs)."""

from __future__ import annotations

import subprocess
import traceback
from pathlib import Path

import pytest
from safetensors import SafetensorError
from torch.distributed.checkpoint.api import CheckpointException

from lowrank_lm.checkpoint import list_checkpoints, load_model, load_state
from lowrank_lm.config import save_config

from .conftest import tiny_run_config
from .ecosystem import cli

ERRORS = {
    "OSError": lambda: OSError(28, "No space left on device"),
    "SafetensorError": lambda: SafetensorError("Error while serializing: I/O error: No space left on device"),
    "RuntimeError": lambda: RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
    "CheckpointException": lambda: CheckpointException(
        "save failed", {0: (OSError(28, "No space left on device"), traceback.StackSummary())}),
}
# where the failure strikes: the weights, the training state (both safetensors), config.yaml (Python I/O)
WRITERS = {"weights": "lowrank_lm.checkpoint.single.save_file", "state": "lowrank_lm.safe_state.save_file",
           "config": "lowrank_lm.checkpoint.commit.save_config"}


def ended_in_one_line(err: str) -> bool:
    """The training's progress lines, then one error line and nothing else (no traceback)."""
    lines = err.splitlines()
    return lines[-1].startswith("lowrank-lm train: error: ") and "Traceback" not in err and \
        sum("error" in line for line in lines) == 1


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("error", ERRORS)
def test_every_writer_error_is_one_line_and_keeps_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch,
                                                                          error, writer):
    out = tmp_path / "run"
    save_config(tiny_run_config(tiny_data, out), tmp_path / "run.yaml")
    assert cli("train", str(tmp_path / "run.yaml"), "--max-steps", "4")[0] == 75

    def fail(*args, **kwargs):
        raise ERRORS[error]()

    monkeypatch.setattr(WRITERS[writer], fail)
    code, _, err = cli("train", str(out), "--max-steps", "8")
    assert code == 2 and ended_in_one_line(err), err
    assert "could not write the checkpoint of step 8" in err and "step-00000004 is intact" in err
    assert ("No space left on device" in err) == (error != "RuntimeError")
    assert [c.name for c in list_checkpoints(out)] == ["step-00000004"]
    assert not list((out / "checkpoints").glob(".tmp-*"))  # nothing half-written left behind
    load_model(out)
    assert load_state(list_checkpoints(out)[-1])["step"] == 4
    monkeypatch.undo()
    assert cli("train", str(out), "--max-steps", "8")[0] == 75  # and the run goes on from it
    assert [c.name for c in list_checkpoints(out)] == ["step-00000004", "step-00000008"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_a_full_tmpfs_ends_in_one_line_with_the_last_checkpoint_intact(tiny_data, tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1300k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission in this container)")
    try:
        out = disk / "run"
        # each checkpoint takes 0.53 MB (0.17 MB weights, 0.35 MB AdamW moments; `du -ab` of step-00000004):
        # 1300 kB holds two of them, the run's other files (~30 kB), and not a third
        save_config(tiny_run_config(tiny_data, out), tmp_path / "run.yaml")
        code, _, err = cli("train", str(tmp_path / "run.yaml"))
        assert code == 2 and ended_in_one_line(err), err
        assert "could not write the checkpoint of step 12" in err and "No space left on device" in err
        assert "step-00000008 is intact" in err
        assert [c.name for c in list_checkpoints(out)] == ["step-00000004", "step-00000008"]
        assert not list((out / "checkpoints").glob(".tmp-*"))
        load_model(out)
        assert load_state(list_checkpoints(out)[-1])["step"] == 8
    finally:
        # lazy: the failed run's event-file writer may still hold a file open on it
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)
