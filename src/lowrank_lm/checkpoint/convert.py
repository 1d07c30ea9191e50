"""Convert a checkpoint of an earlier release (pickled ``state.pt`` and/or ``dcp/.metadata``) to the current one.

Earlier releases kept the training state in ``state.pt`` (``torch.save``) and, for FSDP runs, indexed the
shards with DCP's pickled ``dcp/.metadata``. Reading either unpickles, which can run code a crafted file
carries, so no other command reads them. This module does, once, for a checkpoint the user trusts, and
writes the same weights and state in the current format (see :mod:`lowrank_lm.checkpoint.layout`): an unsharded
checkpoint, whose optimiser state is keyed by parameter name, so that it resumes on any number of processes
and under FSDP as well as DDP.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lowrank_lm.checkpoint.layout import (
    CONFIG_FILE,
    DCP_DIR,
    META_FILE,
    MODEL_FILE,
    OLD_METADATA,
    OLD_STATE,
    is_old_sharded,
    list_checkpoints,
    old_format,
)
from lowrank_lm.checkpoint.read import check_checkpoint
from lowrank_lm.checkpoint.sharded import MODEL, OPTIMIZER
from lowrank_lm.checkpoint.single import save_checkpoint
from lowrank_lm.errors import UserError
from lowrank_lm.permissions import make_temp_dir
from lowrank_lm.resolve import load_config


def _read_old_sharded(ckpt: Path) -> dict[str, Any]:
    """{"model": ..., "optimizer": ...} of an earlier release's DCP shards (unpickles dcp/.metadata)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():  # reading in one process, without a process group, is what we mean
        warnings.simplefilter("ignore")
        return _load_state_dict_from_keys(checkpoint_id=str(ckpt / DCP_DIR))


def _read_old(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(weights, training state) of an old-format checkpoint; this is where pickles are read."""
    state = None
    if (ckpt / OLD_STATE).is_file():
        try:  # the restricted unpickler: tensors and plain containers only, but still a pickle
            state = torch.load(ckpt / OLD_STATE, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{ckpt / OLD_STATE} cannot be read ({type(e).__name__}); it is damaged or not "
                            "a lowrank-lm training state") from None
        if not isinstance(state, dict):
            raise UserError(f"{ckpt / OLD_STATE} is not a lowrank-lm training state (not a mapping)")
    if is_old_sharded(ckpt):
        try:
            full = _read_old_sharded(ckpt)
        except Exception as e:
            raise UserError(f"{ckpt / DCP_DIR} cannot be read ({type(e).__name__}); it is damaged or not a "
                            "lowrank-lm sharded checkpoint") from None
        if state is not None and OPTIMIZER in full:
            state = {**state, "optimizer": full[OPTIMIZER]}  # by parameter name: loads on any layout
        return full[MODEL], state
    return load_file(ckpt / MODEL_FILE), state


def convert_checkpoint(src: str | Path, out: str | Path, warn: Callable[[str], None] = lambda _: None) -> Path:
    """Rewrite the old-format checkpoint ``src`` (a checkpoint folder or a run's newest) as ``out``.

    ``out`` must not exist, or be an empty folder; it is written atomically (a temporary sibling renamed
    into place) and checked by reading it back as a resume would. ``warn`` is told, just before the
    pickles are read, which files those are.
    """
    src, out = Path(src), Path(out)
    if not (src / META_FILE).is_file():
        found = list_checkpoints(src)
        if not found:
            raise UserError(f"{src} is neither a checkpoint folder (with meta.json) nor a run folder with "
                            "checkpoints; give one of those")
        src = found[-1]
    if old_format(src) is None:
        raise UserError(f"{src} is already in the current format (no state.pt, no dcp/.metadata); use it as it is")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; give a new folder for the converted checkpoint")
    cfg = load_config(src / CONFIG_FILE)
    pickles = [str(p) for p in (src / OLD_STATE, src / DCP_DIR / OLD_METADATA) if p.is_file()]
    warn(f"unpickling {' and '.join(pickles)}: a crafted file runs its code now; this is safe only for a "
         "checkpoint you trust")
    weights, state = _read_old(src)
    meta = json.loads((src / META_FILE).read_text())
    step = int(meta["step"])
    meta = {k: v for k, v in meta.items() if k not in ("step", "format")}  # format: now unsharded
    meta["converted_from"] = str(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    # save_checkpoint writes into PARENT/checkpoints/step-N; here the target is one named folder instead
    tmp = make_temp_dir(f".tmp-{out.name}-", out.parent)
    try:
        staged = save_checkpoint(tmp, step, weights, cfg, state, meta)
        if out.exists():
            out.rmdir()  # the empty folder checked above
        os.replace(staged, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    check_checkpoint(out, [] if state is None else ["step"])
    return out
