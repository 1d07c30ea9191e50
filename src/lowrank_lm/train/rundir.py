"""The run directory: its layout, one process at a time (a lock), no silent overwrite, only our own files removed.

Layout of ``train.out_dir`` (everything that reads a run folder takes the names from here)::

    config.yaml      the resolved config, provenance as comments at the top
    metrics.jsonl    one JSON record per logged step and evaluation
    summary.json     the finished run's RunSummary (written last: its presence means "finished")
    tokenizer.json   or tokenizer/ or tokenizer.model: the data's tokenizer, copied
    events/          TensorBoard
    checkpoints/     step-N/ folders (lowrank_lm.checkpoint)
    .lock            held by the training process

This module imports no torch, so the sweep can read run folders cheaply.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lowrank_lm.errors import UserError

if TYPE_CHECKING:
    from lowrank_lm.config import Config
    from lowrank_lm.provenance import Provenance

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVENTS = "events"
CHECKPOINTS = "checkpoints"  # lowrank_lm.checkpoint.CHECKPOINTS
LOCK = ".lock"
# What a run writes; --overwrite removes these and nothing else (tokenizer files: lowrank_lm.data.tokenizer).
RUN_FILES = (CONFIG, METRICS, SUMMARY, "tokenizer.json", "tokenizer", "tokenizer.model", EVENTS, "loss.png")


class RunDir:
    """A training run's output folder, held with an exclusive lock while training."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._created = False

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    def write_config(self, cfg: Config, provenance: Provenance) -> None:
        """Save the resolved config with its provenance as comments above it (loaders skip comments)."""
        import yaml

        from lowrank_lm.config import config_to_dict

        text = "\n".join(provenance.comment_lines()) + "\n" + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
        tmp = self.config.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    def acquire(self) -> None:
        """Create the folder and take its lock; refuse when another process holds it."""
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write to {self.path} ({e.strerror}); choose a writable train.out_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.path} is in use by another running training process; wait for it or "
                            "choose another train.out_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        """Drop the lock; a folder this run created and left empty (it failed at once) is removed."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
            if self._created and [p.name for p in self.path.iterdir()] == [LOCK]:
                (self.path / LOCK).unlink()
                self.path.rmdir()

    def prepare(self, resume: str, overwrite: bool) -> None:
        """Refuse to clobber a finished or existing run unless asked; clear our own files on --overwrite."""
        from lowrank_lm.checkpoint import list_checkpoints

        finished = self.summary.is_file()
        has_checkpoints = bool(list_checkpoints(self.path))
        if overwrite:
            self.clear()
            return
        if finished:
            raise UserError(f"{self.path} holds a finished run; pass --overwrite to train it again or choose "
                            "another train.out_dir")
        if has_checkpoints and resume == "never":
            raise UserError(f"{self.path} has checkpoints and train.resume=never; use train.resume=auto to "
                            "continue, --overwrite to start over, or another train.out_dir")

    def clear(self) -> None:
        """Remove what a run writes (and only that)."""
        for name in RUN_FILES:
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        ckpts = self.path / CHECKPOINTS
        if ckpts.is_dir():
            for child in ckpts.iterdir():
                if child.name.startswith(("step-", ".tmp-step-")):
                    shutil.rmtree(child)
            if not any(ckpts.iterdir()):
                ckpts.rmdir()
