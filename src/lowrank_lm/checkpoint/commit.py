"""The part every checkpoint writer shares: completing a folder atomically, pruning, reporting a failed write.

A checkpoint is written into a temporary sibling folder (see :func:`lowrank_lm.checkpoint.layout.temp_prefix`)
and renamed into place once complete, so a crash never leaves a half-written ``step-*`` folder; readers ignore
folders without ``meta.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError

from lowrank_lm.checkpoint.layout import CHECKPOINTS, CONFIG_FILE, META_FILE, PREFIX, list_checkpoints
from lowrank_lm.config import Config, save_config
from lowrank_lm.errors import UserError
from lowrank_lm.faults import crash_point
from lowrank_lm.permissions import follow_umask
from lowrank_lm.safe_state import write_state

T = TypeVar("T")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_errors() -> tuple[type[BaseException], ...]:
    """What the checkpoint writers raise when a write fails (full disk, permissions, a lost file system):
    OSError (our own files, safetensors' Python side), SafetensorError (safetensors' Rust side), RuntimeError
    (torch's writers) and CheckpointException (torch.distributed.checkpoint, wrapping any of those)."""
    from torch.distributed.checkpoint.api import CheckpointException

    return OSError, SafetensorError, RuntimeError, CheckpointException


def reason(error: BaseException) -> str:
    """One short phrase for why a read or write failed (the first failing rank's cause for DCP's errors)."""
    failures = getattr(error, "failures", None)  # CheckpointException: {rank: (exception, traceback)}
    if isinstance(failures, dict) and failures:
        rank, (cause, _) = next(iter(sorted(failures.items(), key=lambda kv: kv[0])))
        return f"{reason(cause)} on rank {rank}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def writing(run_dir: str | Path, step: int, write: Callable[[], T]) -> T:
    """Run one write of a checkpoint; a failure (full disk, permissions) becomes a one-line UserError that
    names the newest checkpoint, which the atomic write left intact."""
    try:
        return write()
    except write_errors() as e:
        last = list_checkpoints(run_dir)
        kept = f"the previous checkpoint {last[-1]} is intact" if last else "no earlier checkpoint exists"
        raise UserError(f"could not write the checkpoint of step {step} ({reason(e)}); {kept}; free disk space "
                        "or fix permissions, then run again to resume") from None


def complete_checkpoint(tmp: Path, final: Path, step: int, cfg: Config, state: dict[str, Any] | None,
                        meta: dict[str, Any] | None) -> None:
    """Add config, state and meta.json to ``tmp`` (which holds the weights), sync it, rename it to ``final``."""
    save_config(cfg, tmp / CONFIG_FILE)
    if state is not None:
        write_state(tmp, state)
    crash_point("checkpoint.state")
    info = {"step": step, **(meta or {})}
    (tmp / META_FILE).write_text(json.dumps(info, indent=2))
    follow_umask(tmp)  # safetensors writes 0600; teammates read runs as the umask says
    for f in tmp.iterdir():
        if f.is_file():  # a sharded checkpoint's dcp/ folder was synced by its writers
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    crash_point("checkpoint.rename")
    if final.exists():  # only ever our own earlier checkpoint of the same step
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    crash_point("checkpoint.done")


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and stale temporary folders."""
    root = Path(run_dir) / CHECKPOINTS
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    if root.is_dir():
        for tmp in root.glob(f".tmp-{PREFIX}*"):
            shutil.rmtree(tmp, ignore_errors=True)
