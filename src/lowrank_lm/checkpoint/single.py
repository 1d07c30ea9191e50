"""The single-file checkpoint writer: the whole model in ``model.safetensors``, written by one process.

Runs on one process and under DDP write this format (rank 0 alone); FSDP runs write the sharded one
(:mod:`lowrank_lm.checkpoint.sharded`). The folder is completed and renamed by
:func:`lowrank_lm.checkpoint.commit.complete_checkpoint`, as for a sharded checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lowrank_lm.checkpoint.commit import complete_checkpoint
from lowrank_lm.checkpoint.layout import CHECKPOINTS, MODEL_FILE, checkpoint_name, temp_prefix
from lowrank_lm.config import Config
from lowrank_lm.faults import crash_point
from lowrank_lm.permissions import make_temp_dir


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights without wrappers (DDP ``module.``, compile ``_orig_mod.``).

    Self-guided training's dense guides are included (``*.guide``) so that a run can resume mid-guidance.
    """
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return dict(inner.state_dict())


def save_checkpoint(run_dir: str | Path, step: int, weights: torch.nn.Module | dict[str, torch.Tensor], cfg: Config,
                    state: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint atomically and return its folder (``weights``: a model or its state dict)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = make_temp_dir(temp_prefix(final), root)
    try:
        if isinstance(weights, torch.nn.Module):
            weights = model_state(weights)
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / MODEL_FILE)
        crash_point("checkpoint.weights")
        complete_checkpoint(tmp, final, step, cfg, state, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
