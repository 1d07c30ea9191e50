"""The training state of a run: what changes while it trains and must survive a resume, as one dataclass.

A checkpoint saves it whole (:meth:`TrainState.to_saved`: the pickle-free ``state.json`` + ``state.safetensors``
of :mod:`lowrank_lm.safe_state`) and a resume restores it whole (:meth:`TrainState.from_saved`). The keys on
disk are the field names, as in the checkpoints of earlier releases, which therefore still resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from lowrank_lm.checkpoint import OPTIMIZER_EXTRA, OPTIMIZER_GROUPS

REQUIRED = ("step", "tokens", "bad_in_row", "skipped", "guide_flops", "rng", "loaders", "optimizer")
"""What a resume reads from a checkpoint's training state (a sharded one keeps the optimiser in its shards;
``train_s`` and ``wall_s`` are absent in checkpoints of the first release and start at 0 there)."""


@dataclass
class TrainState:
    """What changes during a run and must survive a resume. The counters live here all run long; ``rng``,
    ``loaders`` and ``optimizer`` are filled in when a checkpoint is written, and handed to their owners
    (torch's generators, the loaders, the optimiser) when one is read."""

    rng: dict[str, Any] = field(default_factory=dict)
    """torch's generator states: ``cpu``, and ``cuda`` on a GPU."""
    step: int = 0
    tokens: int = 0
    bad_in_row: int = 0
    """Non-finite steps in a row, up to the current one (train.max_bad_steps stops the run)."""
    skipped: int = 0
    train_s: float = 0.0
    """Seconds spent in training steps, over every session of the run (resumes included)."""
    wall_s: float = 0.0
    """Wall-clock seconds of the earlier sessions of the run (training, evaluation, checkpoints)."""
    guide_flops: int = 0
    """Guide FLOPs of the earlier sessions (self-guided training), summed over all ranks."""
    loaders: dict[str, Any] = field(default_factory=dict)
    """Each loader's position in the global token stream: the same on every rank, valid for any number."""
    optimizer: dict[str, Any] | None = None
    """The optimiser's state dict; from a sharded checkpoint only its non-tensor part (param_groups and
    plain entries; the tensors stay in the shards), and None while a sharded checkpoint is written."""

    def to_saved(self) -> dict[str, Any]:
        """The state as the plain tree that a checkpoint stores (the optimiser left out when it is None)."""
        saved = {spec.name: getattr(self, spec.name) for spec in fields(self)}
        if saved["optimizer"] is None:  # a sharded checkpoint: its writer adds the optimiser's plain part
            del saved["optimizer"]
        return saved

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainState:
        """The state a checkpoint stored (see :data:`REQUIRED` for what it must hold)."""
        optimizer = saved.get("optimizer")
        if optimizer is None and OPTIMIZER_GROUPS in saved:  # sharded: the plain part sits beside the rest
            optimizer = {key: saved[key] for key in (OPTIMIZER_GROUPS, OPTIMIZER_EXTRA) if key in saved}
        return cls(rng=saved["rng"], step=int(saved["step"]), tokens=int(saved["tokens"]),
                   bad_in_row=int(saved["bad_in_row"]), skipped=int(saved["skipped"]),
                   train_s=float(saved.get("train_s", 0.0)), wall_s=float(saved.get("wall_s", 0.0)),
                   guide_flops=int(saved["guide_flops"]), loaders=saved["loaders"], optimizer=optimizer)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """torch's generator states on this process (CPU, and the GPU's when training on one)."""
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    """Set torch's generators back to a state :func:`capture_rng` took."""
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
