"""Checkpoints: weights and training state in safetensors plus JSON, written atomically, read without pickle.

One package, no circle inside; each module imports only those above it in this list:

- :mod:`~lowrank_lm.checkpoint.layout`: what lives where (folder and file names, which format a folder holds,
  the refusal of the pickled formats of earlier releases);
- :mod:`~lowrank_lm.checkpoint.commit`: what both writers share (the atomic completion of a folder, pruning,
  a failed write as one line);
- :mod:`~lowrank_lm.checkpoint.single`: the single-file writer (``model.safetensors``; one process, DDP);
- :mod:`~lowrank_lm.checkpoint.sharded`: the sharded writer and reader of FSDP runs (``dcp/``, DCP's
  safetensors shards, every rank its own);
- :mod:`~lowrank_lm.checkpoint.read`: the readers, which take both formats;
- :mod:`~lowrank_lm.checkpoint.convert`: the one-time conversion of a pickled checkpoint of an earlier
  release (``lowrank-lm convert-checkpoint``), imported on its own by that command.

The names below are the package's API; code outside the package imports them from here.
"""

from __future__ import annotations

from lowrank_lm.checkpoint.commit import complete_checkpoint, prune_checkpoints, write_errors, writing
from lowrank_lm.checkpoint.layout import (
    CHECKPOINTS,
    CONFIG_FILE,
    META_FILE,
    MODEL_FILE,
    OLD_STATE,
    PREFIX,
    checkpoint_name,
    is_old_sharded,
    is_sharded,
    list_checkpoints,
    old_format,
    refuse_old_format,
    resolve_checkpoint,
    shard_files,
)
from lowrank_lm.checkpoint.read import check_checkpoint, check_weights, load_model, load_state, weight_shapes
from lowrank_lm.checkpoint.sharded import (
    OPTIMIZER_EXTRA,
    OPTIMIZER_GROUPS,
    load_sharded,
    optimizer_state_by_name,
    read_sharded_tensors,
    save_sharded_checkpoint,
)
from lowrank_lm.checkpoint.single import model_state, save_checkpoint

__all__ = [
    "CHECKPOINTS", "CONFIG_FILE", "META_FILE", "MODEL_FILE", "OLD_STATE", "OPTIMIZER_EXTRA", "OPTIMIZER_GROUPS",
    "PREFIX", "check_checkpoint", "check_weights", "checkpoint_name", "complete_checkpoint", "is_old_sharded",
    "is_sharded", "list_checkpoints", "load_model", "load_sharded", "load_state", "model_state", "old_format",
    "optimizer_state_by_name", "prune_checkpoints", "read_sharded_tensors", "refuse_old_format",
    "resolve_checkpoint", "save_checkpoint", "save_sharded_checkpoint", "shard_files", "weight_shapes",
    "write_errors", "writing",
]
