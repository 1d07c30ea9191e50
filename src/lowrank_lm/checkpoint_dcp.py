"""Sharded checkpoints of FSDP2 runs, written by every rank with torch.distributed.checkpoint (DCP).

A sharded checkpoint is a normal checkpoint folder (see :mod:`lowrank_lm.checkpoint`) whose weights and
optimiser state live in ``dcp/`` instead of ``model.safetensors`` and ``state.pt``::

    step-00000100/
        dcp/.metadata, dcp/__0_0.distcp, ...   {"model": ..., "optimizer": ...}, one data file per writer rank
        config.yaml, state.pt, meta.json        as in every checkpoint (state.pt without the optimiser)

No rank ever holds the whole state: each writes its own shards, rank 0 adds the metadata. DCP re-shards on
load, so the same files resume an FSDP run on any number of processes, a DDP or single-process run, and a
single process without a process group reads the weights for eval, export, generate and ``lowrank_lm.load``.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lowrank_lm.errors import UserError

DCP_DIR = "dcp"


def is_sharded(ckpt: str | Path) -> bool:
    """Whether a checkpoint folder holds DCP shards (an FSDP run's) rather than ``model.safetensors``."""
    return (Path(ckpt) / DCP_DIR / ".metadata").is_file()


def save_sharded_checkpoint(run_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            cfg: Any, state: dict[str, Any], meta: dict[str, Any],
                            agree: Callable[[], AbstractContextManager] = nullcontext) -> Path:
    """Every rank writes its shards of model and optimiser; rank 0 completes the folder atomically.

    Collective: all ranks call it. ``state`` (step, RNG, loader positions; no optimiser) is written by rank 0.
    The folder appears under its final name only once complete, as for unsharded checkpoints. ``agree``
    wraps each phase so that a failure on one rank ends every rank (the trainer passes ``all_or_none``);
    a failed write is a :class:`UserError` naming the checkpoint that is still intact.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from lowrank_lm.checkpoint import CHECKPOINTS, checkpoint_name, complete_checkpoint
    from lowrank_lm.faults import crash_point

    main = dist.get_rank() == 0
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-sharded"  # one name that every rank knows without a broadcast
    try:
        with agree():
            if main:
                shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from a crash at this step
                _writing(run_dir, step, lambda: tmp.mkdir(parents=True))
        with agree():
            shards = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
            _writing(run_dir, step, lambda: dcp.save(shards, checkpoint_id=tmp / DCP_DIR))
            crash_point("checkpoint.weights")
        with agree():
            if main:
                _writing(run_dir, step, lambda: complete_checkpoint(tmp, final, step, cfg, state,
                                                                     {**meta, "format": "dcp"}))
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _writing(run_dir: str | Path, step: int, write: Callable[[], Any]) -> None:
    """Run one write of a checkpoint; a failure (full disk, permissions) becomes a one-line UserError."""
    from torch.distributed.checkpoint.api import CheckpointException

    from lowrank_lm.checkpoint import list_checkpoints

    try:
        write()
    except (OSError, CheckpointException) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
        last = list_checkpoints(run_dir)
        kept = f"the previous checkpoint {last[-1]} is intact" if last else "no earlier checkpoint exists"
        raise UserError(f"could not write the checkpoint of step {step} ({reason}); {kept}; free disk space "
                        "or fix permissions, then run again to resume") from None


def load_sharded(ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a sharded checkpoint into ``model`` (and ``optimizer``) of any layout, re-sharding as needed.

    ``model`` may be FSDP2-sharded over any number of processes, plain under DDP, or plain in a process
    without a process group. Under a process group this is collective.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    target: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        target["optimizer"] = get_optimizer_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process reading alone is what we mean, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(target, checkpoint_id=Path(ckpt) / DCP_DIR)
    set_model_state_dict(model, target["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, target["optimizer"])


def optimizer_state_by_name(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state dict keyed by parameter names, as the DCP state-dict API takes it.

    ``optimizer.state_dict()`` numbers the parameters in the order the optimiser received them, which
    for our single group is ``model.parameters()``; a state already keyed by name is returned as it is.
    """
    groups = state["param_groups"]
    if all(isinstance(p, str) for g in groups for p in g["params"]):
        return state
    names = [name for name, _ in model.named_parameters()]
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups]}
