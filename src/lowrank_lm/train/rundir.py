"""The run directory: its layout, one process at a time (a lock), no silent overwrite, only our own files removed.

Layout of ``train.out_dir`` (everything that reads a run folder takes the names from here)::

    config.yaml      the resolved config, provenance as comments at the top
    metrics.jsonl    one JSON record per logged step and evaluation
    summary.json     the finished run's RunSummary (written last: its presence means "finished")
    tokenizer.json   or tokenizer/ or tokenizer.model: the data's tokenizer, copied
    events/          TensorBoard
    checkpoints/     step-N/ folders (lowrank_lm.checkpoint)
    .lock            held by the training process (lowrank_lm.locks; the file stays, the lock ends with it)
    .lowrank-lm-run.json   the names above that this run (or the sweep that made the folder) wrote

A folder that is not empty and holds no record is not a run and is refused (lowrank_lm.ownership); a run
folder of an older version (config.yaml beside metrics.jsonl, summary.json or checkpoints, no record) is
recognised as one. This module imports no torch, so the sweep can read run folders cheaply.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from lowrank_lm.atomic import write_text_atomic
from lowrank_lm.errors import UserError
from lowrank_lm.locks import try_lock
from lowrank_lm.ownership import Ownership

if TYPE_CHECKING:
    from lowrank_lm.config import Config
    from lowrank_lm.provenance import Provenance

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVENTS = "events"
CHECKPOINTS = "checkpoints"  # lowrank_lm.checkpoint.CHECKPOINTS
LOCK = ".lock"
RECORD = ".lowrank-lm-run.json"
# What a run writes; --overwrite removes these (those of them the record lists) and nothing else (tokenizer
# files: lowrank_lm.data.tokenizer).
RUN_FILES = (CONFIG, METRICS, SUMMARY, "tokenizer.json", "tokenizer", "tokenizer.model", EVENTS, "loss.png")
NOT_OURS = "choose another train.out_dir (a new or empty folder, or a run's own)"


# What a sweep adds to a run folder it made (lowrank_lm.launch.execute / job_record): its log, failure marker
# and job record.
SWEEP_FILES = ("train.log", "sweep-failed.json", "job.json")


def _legacy_run(folder: Path) -> set[str] | None:
    """A run folder written before runs kept a record: its config beside its metrics, summary or checkpoints
    (or, for a sweep's run that never got that far, beside the sweep's log or failure marker)."""
    marks = (METRICS, SUMMARY, CHECKPOINTS, *SWEEP_FILES)
    if (folder / CONFIG).is_file() and any(os.path.lexists(folder / n) for n in marks):
        return {*RUN_FILES, CHECKPOINTS, LOCK, *SWEEP_FILES}
    return None


def run_ownership(path: str | Path) -> Ownership:
    """Who owns what in a run folder (the trainer and the sweep that made it share the record)."""
    return Ownership(Path(path), RECORD, "a training run", _legacy_run)


class RunDir:
    """A training run's output folder, held with an exclusive lock while training."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: FileLock | None = None
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
        write_text_atomic(self.config, text)

    def acquire(self) -> None:
        """Claim the folder (refused when it is not a run's), create it and take its lock; refuse when another
        process holds it."""
        owner = run_ownership(self.path)
        try:
            self._created = not self.path.exists()
            owner.claim({*RUN_FILES, CHECKPOINTS, LOCK}, NOT_OURS)
            lock = try_lock(self.path / LOCK)
        except OSError as e:
            raise UserError(f"cannot write to {self.path} ({e.strerror}); choose a writable train.out_dir") from None
        if lock is None:
            raise UserError(f"{self.path} is in use by another running training process; wait for it or "
                            "choose another train.out_dir")
        self._lock = lock

    def release(self) -> None:
        """Drop the lock; a folder this run created and left empty (it failed at once) is removed."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            if self._created and {p.name for p in self.path.iterdir()} <= {LOCK, RECORD}:
                shutil.rmtree(self.path)

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
        """Remove what a run wrote (the entries its record lists, and only those)."""
        owner = run_ownership(self.path)
        owner.remove(RUN_FILES)
        ckpts = self.path / CHECKPOINTS
        if CHECKPOINTS in (owner.owned() or set()) and ckpts.is_dir() and not ckpts.is_symlink():
            for child in ckpts.iterdir():
                if child.name.startswith(("step-", ".tmp-step-")) and not child.is_symlink():
                    shutil.rmtree(child)
            if not any(ckpts.iterdir()):
                ckpts.rmdir()
