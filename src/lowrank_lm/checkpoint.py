"""Checkpoints: weights in safetensors, training state loaded weights-only, written atomically.

Layout of a run directory::

    RUN/config.yaml                     the resolved config of the run
    RUN/checkpoints/step-00000100/      one complete checkpoint
        model.safetensors               model weights (no pickle)
        config.yaml                     the config the weights belong to
        state.pt                        optimiser, schedule, RNG, loader position (torch.load weights_only)
        meta.json                       step, tokens, written last: its presence marks the folder complete

FSDP runs write a sharded checkpoint instead: ``dcp/`` (torch.distributed.checkpoint, every rank its own
shards, optimiser included) in place of ``model.safetensors``, and ``state.pt`` without the optimiser (see
:mod:`lowrank_lm.checkpoint_dcp`). Every reader here takes both formats.

A checkpoint is written into a temporary sibling folder and renamed into place, so a crash never
leaves a half-written ``step-*`` folder; readers ignore folders without ``meta.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lowrank_lm.checkpoint_dcp import is_sharded, load_sharded
from lowrank_lm.config import Config, load_config, save_config
from lowrank_lm.errors import UserError
from lowrank_lm.faults import crash_point
from lowrank_lm.model import Transformer
from lowrank_lm.permissions import follow_umask, make_temp_dir

CHECKPOINTS = "checkpoints"
PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint path or a run directory (its newest checkpoint)."""
    path = Path(path)
    if (path / "meta.json").is_file() and ((path / "model.safetensors").is_file() or is_sharded(path)):
        return path
    if not path.exists():
        raise UserError(f"{path} does not exist; give a run directory or a checkpoint folder")
    found = list_checkpoints(path)
    if not found:
        raise UserError(f"{path} holds no complete checkpoint; give a run directory that has "
                        f"{CHECKPOINTS}/{PREFIX}*/meta.json, or train first")
    return found[-1]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, step: int, weights: torch.nn.Module | dict[str, torch.Tensor], cfg: Config,
                    state: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint atomically and return its folder (``weights``: a model or its state dict)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = make_temp_dir(f".tmp-{final.name}-", root)
    try:
        if isinstance(weights, torch.nn.Module):
            weights = model_state(weights)
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / "model.safetensors")
        crash_point("checkpoint.weights")
        complete_checkpoint(tmp, final, step, cfg, state, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def complete_checkpoint(tmp: Path, final: Path, step: int, cfg: Config, state: dict[str, Any] | None,
                        meta: dict[str, Any] | None) -> None:
    """Add config, state and meta.json to ``tmp`` (which holds the weights), sync it, rename it to ``final``."""
    save_config(cfg, tmp / "config.yaml")
    if state is not None:
        torch.save(state, tmp / "state.pt")
    crash_point("checkpoint.state")
    info = {"step": step, **(meta or {})}
    (tmp / "meta.json").write_text(json.dumps(info, indent=2))
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


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights without wrappers (DDP ``module.``, compile ``_orig_mod.``).

    Self-guided training's dense guides are included (``*.guide``) so that a run can resume mid-guidance.
    """
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return dict(inner.state_dict())


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Config, Path]:
    """Build the model of a checkpoint (or a run's newest one) and load its weights, no pickle involved."""
    ckpt = resolve_checkpoint(path)
    cfg = load_config(ckpt / "config.yaml")
    model = Transformer(cfg.model)
    if is_sharded(ckpt):
        load_sharded(ckpt, model.to(device))
        return model, cfg, ckpt
    try:
        weights = load_file(ckpt / "model.safetensors", device=str(device))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{ckpt / 'model.safetensors'} cannot be read ({e}); use another checkpoint") from None
    # guides only matter while training; inference and export use the structured weights alone
    weights = {k: v for k, v in weights.items() if not k.endswith(".guide")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(f"{ckpt} does not match its config (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); it comes from another model")
    return model.to(device), cfg, ckpt


def load_state(ckpt: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint, loaded with ``weights_only=True`` (no arbitrary code)."""
    path = Path(ckpt) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} is missing; this checkpoint cannot resume training") from None
    except Exception as e:  # the unpickler refuses anything but tensors and plain containers
        raise UserError(f"{path} is not a valid training state ({type(e).__name__}); it may be corrupt "
                        "or crafted — resume from another checkpoint") from None
