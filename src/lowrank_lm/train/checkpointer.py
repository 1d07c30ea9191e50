"""The trainer's checkpoints: which one a run resumes from, reading it back, writing, pruning, the cadence.

Files and formats are the :mod:`lowrank_lm.checkpoint` package's; this module decides when and what. Every
method that reads or writes is entered by all ranks: a failure on one rank ends every rank alike
(:func:`lowrank_lm.train.agreement.all_or_none`), with one line from rank 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lowrank_lm.checkpoint import (
    CHECKPOINTS,
    CONFIG_FILE,
    MODEL_FILE,
    check_checkpoint,
    is_sharded,
    list_checkpoints,
    load_sharded,
    load_state,
    model_state,
    old_format,
    optimizer_state_by_name,
    prune_checkpoints,
    refuse_old_format,
    resolve_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
    writing,
)
from lowrank_lm.config import Config
from lowrank_lm.errors import UserError
from lowrank_lm.model import Transformer
from lowrank_lm.resolve import load_config
from lowrank_lm.train import distributed
from lowrank_lm.train.agreement import all_or_none
from lowrank_lm.train.state import REQUIRED, TrainState, restore_rng


class Checkpointer:
    """Checkpoints of the run in ``run_dir`` for ``cfg``; ``sharded``: FSDP's per-rank shards (collective)."""

    def __init__(self, cfg: Config, run_dir: Path, dist: distributed.Dist, sharded: bool,
                 say: Callable[[str], None]) -> None:
        self.cfg, self.run_dir, self.dist, self.sharded, self.say = cfg, run_dir, dist, sharded, say
        self.last_save = time.perf_counter()

    # ------------------------------------------------------------------ the resume choice
    def choose_resume(self) -> Path | None:
        """train.resume: never, auto (the newest checkpoint that reads whole) or a path; the same on all ranks."""
        resume = self.cfg.train.resume
        if resume == "never":
            return None
        chosen: Path | None = None
        with all_or_none():  # rank 0 chooses for all: on lagging shared storage ranks could see other steps
            if self.dist.is_main:
                chosen = self._newest_whole() if resume == "auto" else self._named(resume)
        return distributed.broadcast_path(chosen, self.dist.device)

    def _named(self, path: str) -> Path:
        """train.resume=PATH: that checkpoint (a run folder's newest), which must read whole."""
        checkpoint = resolve_checkpoint(path)
        check_checkpoint(checkpoint, REQUIRED)
        return checkpoint

    def _newest_whole(self) -> Path | None:
        """The newest checkpoint of the run that reads whole; each newer one is skipped with its reason."""
        skipped: list[str] = []
        for checkpoint in reversed(list_checkpoints(self.run_dir)):
            if old_format(checkpoint):
                refuse_old_format(checkpoint)
            try:
                check_checkpoint(checkpoint, REQUIRED)
            except UserError as e:
                skipped.append(f"{checkpoint.name}: {e}")
                continue
            for line in skipped:  # said only when the run goes on; otherwise the error below says it
                self.say(f"resume: skipping {line}")
            if skipped:
                self.say(f"resume: continuing from {checkpoint.name}, the newest checkpoint that reads whole")
            return checkpoint
        if skipped:
            raise UserError(f"no checkpoint in {self.run_dir / CHECKPOINTS} reads whole (newest "
                            f"{skipped[0]}); move them away to keep them, or pass --overwrite to start over")
        return None

    def newest(self) -> Path | None:
        """The run's newest complete checkpoint, or None."""
        found = list_checkpoints(self.run_dir)
        return found[-1] if found else None

    # ------------------------------------------------------------------ reading back
    def read_state(self, checkpoint: Path) -> TrainState:
        """The training state of ``checkpoint``, whole."""
        with all_or_none():  # an unreadable checkpoint ends every rank alike
            saved = load_state(checkpoint, REQUIRED)
        return TrainState.from_saved(saved)

    def load_weights(self, model: Transformer, checkpoint: Path) -> None:
        """The checkpoint's config must be the run's; an unsharded checkpoint's weights go into ``model`` before it
        is wrapped or sharded (a sharded one's come in with the optimiser, see :meth:`restore`)."""
        with all_or_none():
            saved = load_config(checkpoint / CONFIG_FILE)
            if saved.model != self.cfg.model:
                raise UserError(f"checkpoint {checkpoint} was trained with another model config; use the same "
                                "model settings, train.resume=never, or another train.out_dir")
            if not is_sharded(checkpoint):
                from safetensors.torch import load_file

                model.load_state_dict(load_file(checkpoint / MODEL_FILE), strict=True)

    def restore(self, model: Transformer, optimizer: torch.optim.Optimizer, loaders: dict[str, Any],
                checkpoint: Path, state: TrainState) -> None:
        """Hand ``state``'s optimiser, loader positions and generator states to their owners, then drop them
        from ``state`` (the owners hold them now)."""
        with all_or_none():  # a sharded checkpoint's weights come in here too (collective)
            self._load_optimizer(model, optimizer, checkpoint, state.optimizer or {})
        for name, loader in loaders.items():
            loader.load_state_dict(state.loaders[name])
        restore_rng(state.rng, self.dist.device)
        state.rng, state.loaders, state.optimizer = {}, {}, None

    def _load_optimizer(self, model: Transformer, optimizer: torch.optim.Optimizer, checkpoint: Path,
                        saved: dict[str, Any]) -> None:
        """Optimiser state (from a sharded checkpoint the weights too), whatever the world size either side."""
        if is_sharded(checkpoint):
            load_sharded(checkpoint, model, optimizer, saved)
        elif self.sharded or isinstance(next(iter(saved["state"]), 0), str):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            # a full state (one process, DDP, or FSDP before sharded checkpoints), sharded as it loads
            by_name = optimizer_state_by_name(model, saved, optimizer)
            set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(saved)

    # ------------------------------------------------------------------ writing
    def due(self) -> bool:
        """train.checkpoint_minutes have passed since the last checkpoint (rank 0's clock decides for all)."""
        minutes = self.cfg.train.checkpoint_minutes
        return bool(self.dist.is_main and minutes and time.perf_counter() - self.last_save >= 60 * minutes)

    def save(self, model: Transformer, optimizer: torch.optim.Optimizer, state: TrainState,
             total_steps: int) -> None:
        """Write the checkpoint of ``state`` (its rng and loaders filled in) and prune the old ones. Collective."""
        meta = {"tokens": state.tokens, "total_steps": total_steps, "world_size": self.dist.world_size}
        if self.sharded:  # FSDP: every rank writes its own shards (torch.distributed.checkpoint)
            save_sharded_checkpoint(self.run_dir, state.step, model, optimizer, self.cfg, state.to_saved(), meta,
                                    agree=all_or_none)
            with all_or_none():
                if self.dist.is_main:
                    prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
        else:
            with all_or_none():  # a failed write (a full disk) ends every rank with its one line
                if self.dist.is_main:
                    whole = replace(state, optimizer=optimizer.state_dict()).to_saved()
                    self._write_single(model_state(model), whole, meta, state.step)
        self.last_save = time.perf_counter()

    def _write_single(self, weights: dict[str, torch.Tensor], saved: dict[str, Any], meta: dict[str, Any],
                      step: int) -> None:
        # any writer's failure (a full disk: OSError, SafetensorError, RuntimeError) is one line, exit 2
        writing(self.run_dir, step, lambda: save_checkpoint(self.run_dir, step, weights, self.cfg, saved, meta=meta))
        prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
