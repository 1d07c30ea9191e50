"""Sharded checkpoints of FSDP2 runs, written by every rank with torch.distributed.checkpoint (DCP).

A sharded checkpoint is a normal checkpoint folder (see :mod:`lowrank_lm.checkpoint.layout`) whose weights and
optimiser tensors live in ``dcp/`` instead of ``model.safetensors`` and ``state.safetensors``::

    step-00000100/
        dcp/shard-00001-model-00001-of-00001.safetensors, ...   one safetensors file per writer rank
        config.yaml, state.json, state.safetensors, meta.json    as in every checkpoint

The shards are written by DCP's own ``HuggingFaceStorageWriter`` (``save_distributed=True``): each rank
writes its tensors, with the offsets of its pieces in the safetensors header, and no ``.metadata`` pickle.
``HuggingFaceStorageReader`` rebuilds DCP's metadata from those headers, so loading never unpickles. The
optimiser's non-tensor entries (``param_groups``: learning rate, betas, ...) go into the checkpoint's
``state.json`` (rank 0's copy; every rank has the same one).

No rank ever holds the whole state. DCP re-shards on load, so the same files resume an FSDP run on any
number of processes, a DDP or single-process run, and a single process without a process group reads the
weights for eval, export, generate and ``lowrank_lm.load``.

Checkpoints of earlier releases kept a pickled ``dcp/.metadata`` (DCP's ``FileSystemWriter``); they are
refused (see :func:`lowrank_lm.checkpoint.layout.refuse_old_format`) and ``lowrank-lm convert-checkpoint``
rewrites them.
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

from lowrank_lm.checkpoint.commit import complete_checkpoint, writing
from lowrank_lm.checkpoint.layout import CHECKPOINTS, DCP_DIR, checkpoint_name, temp_prefix
from lowrank_lm.faults import crash_point

MODEL, OPTIMIZER = "model", "optimizer"
OPTIMIZER_GROUPS = "optimizer_param_groups"
"""Key of the optimiser's ``param_groups`` (plain data, parameter names) in a sharded checkpoint's state."""
OPTIMIZER_EXTRA = "optimizer_extra"
"""Key of the per-parameter optimiser entries that are not tensors (none for AdamW) in the state."""


def split_optimizer_state(osd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A name-keyed optimiser state dict -> (its tensors, for DCP; its other entries: param_groups, plain values)."""
    tensors: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, entries in osd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors.setdefault(name, {})[key] = value
            else:
                extra.setdefault(name, {})[key] = value
    return tensors, {OPTIMIZER_GROUPS: osd["param_groups"], OPTIMIZER_EXTRA: extra}


def join_optimizer_state(tensors: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`split_optimizer_state` (``state``: the checkpoint's training state)."""
    full = {name: dict(entries) for name, entries in tensors.items()}
    for name, entries in state.get(OPTIMIZER_EXTRA, {}).items():
        full.setdefault(name, {}).update(entries)
    return {"state": full, "param_groups": state[OPTIMIZER_GROUPS]}


def save_sharded_checkpoint(run_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            cfg: Any, state: dict[str, Any], meta: dict[str, Any],
                            agree: Callable[[], AbstractContextManager] = nullcontext) -> Path:
    """Every rank writes its shards of model and optimiser; rank 0 completes the folder atomically.

    Collective: all ranks call it. ``state`` (step, RNG, loader positions; no optimiser) is written by rank 0,
    with the optimiser's param_groups added. The folder appears under its final name only once complete, as
    for unsharded checkpoints. ``agree`` wraps each phase so that a failure on one rank ends every rank (the
    trainer passes ``all_or_none``); a failed write is a :class:`UserError` naming the checkpoint still intact.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    main = dist.get_rank() == 0
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    tmp = root / f"{temp_prefix(final)}sharded"  # one name that every rank knows without a broadcast
    try:
        with agree():
            if main:
                shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from a crash at this step
                writing(run_dir, step, lambda: tmp.mkdir(parents=True))
        with agree():
            tensors, extra = split_optimizer_state(get_optimizer_state_dict(model, optimizer))
            shards = {MODEL: get_model_state_dict(model), OPTIMIZER: tensors}
            writer = HuggingFaceStorageWriter(str(tmp / DCP_DIR), save_distributed=True)
            writing(run_dir, step, lambda: dcp.save(shards, storage_writer=writer))
            crash_point("checkpoint.weights")
        with agree():
            if main:
                writing(run_dir, step, lambda: complete_checkpoint(tmp, final, step, cfg, {**state, **extra},
                                                                    {**meta, "format": "dcp"}))
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_sharded(ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 state: dict[str, Any] | None = None) -> None:
    """Load a sharded checkpoint into ``model`` (and ``optimizer``, given the checkpoint's training ``state``
    for its param_groups) of any layout, re-sharding as needed.

    ``model`` may be FSDP2-sharded over any number of processes, plain under DDP, or plain in a process
    without a process group. Under a process group this is collective.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    target: dict[str, Any] = {MODEL: get_model_state_dict(model)}
    if optimizer is not None:
        target[OPTIMIZER], _ = split_optimizer_state(get_optimizer_state_dict(model, optimizer))
    with warnings.catch_warnings():  # one process reading alone is what we mean, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(target, storage_reader=HuggingFaceStorageReader(str(Path(ckpt) / DCP_DIR)))
    set_model_state_dict(model, target[MODEL])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, join_optimizer_state(target[OPTIMIZER], state or {}))


def sharded_tensor_shapes(ckpt: str | Path) -> dict[str, tuple[int, ...]]:
    """Full shapes of every tensor in a sharded checkpoint (``model.`` and ``optimizer.`` keys), from the
    safetensors headers alone; a shard that cannot be read raises (SafetensorError, OSError)."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = HuggingFaceStorageReader(str(Path(ckpt) / DCP_DIR)).read_metadata()
    # safetensors shards hold tensors only (never DCP's bytes entries)
    return {k: tuple(v.size) for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def read_sharded_tensors(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded checkpoint as a full tensor in this process, keyed ``model.NAME`` and
    ``optimizer.NAME.KEY`` (for comparisons and conversions; no process group needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = HuggingFaceStorageReader(str(Path(ckpt) / DCP_DIR))
    meta = reader.read_metadata()
    flat = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in meta.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(Path(ckpt) / DCP_DIR)))
    return flat


def optimizer_state_by_name(model: nn.Module, state: dict[str, Any],
                            optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """An optimiser state dict keyed by parameter names, as the DCP state-dict API takes it.

    ``optimizer.state_dict()`` numbers the parameters in the order of its param_groups; with ``optimizer``
    given that order is read from it, else it is taken to be ``model.parameters()`` (one group). A state
    already keyed by name is returned as it is.
    """
    groups = state["param_groups"]
    if all(isinstance(p, str) for g in groups for p in g["params"]):
        return state
    by_id = {id(p): name for name, p in model.named_parameters()}
    if optimizer is not None:
        names = [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
    else:
        names = [name for name, _ in model.named_parameters()]
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups]}
