"""Checkpoints: weights and training state in safetensors plus JSON, written atomically, read without pickle.

Layout of a run directory::

    RUN/config.yaml                     the resolved config of the run
    RUN/checkpoints/step-00000100/      one complete checkpoint
        model.safetensors               model weights
        config.yaml                     the config the weights belong to (read with yaml.safe_load)
        state.json, state.safetensors   optimiser, schedule, RNG, loader position (see lowrank_lm.safe_state)
        meta.json                       step, tokens, written last: its presence marks the folder complete

FSDP runs write a sharded checkpoint instead: ``dcp/`` (torch.distributed.checkpoint's safetensors shards,
every rank its own, optimiser tensors included) in place of ``model.safetensors`` (see
:mod:`lowrank_lm.checkpoint_dcp`). Every reader here takes both formats. No file of a checkpoint is ever
unpickled: checkpoints of earlier releases (a pickled ``state.pt`` or ``dcp/.metadata``) are refused with
the command that converts them, ``lowrank-lm convert-checkpoint``, to run where the files are trusted.

A checkpoint is written into a temporary sibling folder and renamed into place, so a crash never
leaves a half-written ``step-*`` folder; readers ignore folders without ``meta.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lowrank_lm.checkpoint_dcp import (
    OPTIMIZER_GROUPS,
    is_old_sharded,
    is_sharded,
    load_sharded,
    sharded_tensor_shapes,
)
from lowrank_lm.config import Config, save_config
from lowrank_lm.errors import UserError
from lowrank_lm.faults import crash_point
from lowrank_lm.model import Transformer
from lowrank_lm.permissions import follow_umask, make_temp_dir
from lowrank_lm.resolve import load_config
from lowrank_lm.safe_state import has_state, read_state, write_state

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
OLD_STATE = "state.pt"
"""The pickled training state of earlier releases: never read here (``convert-checkpoint`` reads it)."""
T = TypeVar("T")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def old_format(ckpt: str | Path) -> str | None:
    """What makes ``ckpt`` a checkpoint of an earlier release (a pickle we will not read), or None."""
    ckpt = Path(ckpt)
    if is_old_sharded(ckpt):
        return "its sharded weights are indexed by a pickled dcp/.metadata"
    if (ckpt / OLD_STATE).is_file() and not has_state(ckpt):
        return f"its training state is a pickle ({OLD_STATE})"
    return None


def refuse_old_format(ckpt: str | Path) -> None:
    """A one-line :class:`UserError` for a checkpoint in the pickled format of earlier releases."""
    why = old_format(ckpt)
    if why is not None:
        raise UserError(f"{ckpt} is a checkpoint of an earlier lowrank-lm: {why}, which can run code when read, "
                        f"so it is not loaded; if you trust where it came from, convert it once with "
                        f"`lowrank-lm convert-checkpoint {ckpt} NEW_FOLDER` and use NEW_FOLDER")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint path or a run directory (its newest checkpoint)."""
    path = Path(path)
    if (path / "meta.json").is_file():
        if (path / "model.safetensors").is_file() or is_sharded(path):
            return path
        refuse_old_format(path)
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


def write_errors() -> tuple[type[BaseException], ...]:
    """What the checkpoint writers raise when a write fails (full disk, permissions, a lost file system):
    OSError (our own files, safetensors' Python side), SafetensorError (safetensors' Rust side), RuntimeError
    (torch's writers) and CheckpointException (torch.distributed.checkpoint, wrapping any of those)."""
    from torch.distributed.checkpoint.api import CheckpointException

    return OSError, SafetensorError, RuntimeError, CheckpointException


def _reason(e: BaseException) -> str:
    failures = getattr(e, "failures", None)  # CheckpointException: {rank: (exception, traceback)}
    if isinstance(failures, dict) and failures:
        rank, (cause, _) = next(iter(sorted(failures.items(), key=lambda kv: kv[0])))
        return f"{_reason(cause)} on rank {rank}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def writing(run_dir: str | Path, step: int, write: Callable[[], T]) -> T:
    """Run one write of a checkpoint; a failure (full disk, permissions) becomes a one-line UserError that
    names the newest checkpoint, which the atomic write left intact."""
    try:
        return write()
    except write_errors() as e:
        last = list_checkpoints(run_dir)
        kept = f"the previous checkpoint {last[-1]} is intact" if last else "no earlier checkpoint exists"
        raise UserError(f"could not write the checkpoint of step {step} ({_reason(e)}); {kept}; free disk space "
                        "or fix permissions, then run again to resume") from None


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
        write_state(tmp, state)
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
    if is_old_sharded(ckpt):  # an old state.pt beside model.safetensors is harmless here: it is never read
        refuse_old_format(ckpt)
    cfg = load_config(ckpt / "config.yaml")
    check_weights(ckpt, cfg)  # names and shapes first: a mismatch is one line, not a traceback
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
    model.load_state_dict(weights, strict=True)
    return model.to(device), cfg, ckpt


def weight_shapes(ckpt: str | Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's model weights, from the safetensors headers alone (guides left out).

    A file that cannot be read (truncated, not safetensors) is a one-line :class:`UserError`.
    """
    ckpt = Path(ckpt)
    try:
        if is_sharded(ckpt):
            shapes = {k.removeprefix("model."): v for k, v in sharded_tensor_shapes(ckpt).items()
                      if k.startswith("model.")}
        else:
            with safe_open(ckpt / "model.safetensors", framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        where = ckpt / ("dcp" if is_sharded(ckpt) else "model.safetensors")
        raise UserError(f"{where} cannot be read ({_reason(e)}); it is truncated or not a checkpoint; use "
                        "another checkpoint") from None
    return {k: v for k, v in shapes.items() if not k.endswith(".guide")}


def check_weights(ckpt: str | Path, cfg: Config) -> None:
    """The checkpoint's weights are those of ``cfg.model``'s model (names and shapes), else a one-line error."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = {k: tuple(v.shape) for k, v in Transformer(cfg.model).state_dict().items()}
    found = weight_shapes(ckpt)
    if found != expected:
        missing = sorted(expected.keys() - found.keys())
        unexpected = sorted(found.keys() - expected.keys())
        shaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
        detail = "; ".join(f"{what} {names[:3]}" for what, names in (
            ("missing", missing), ("unexpected", unexpected), ("other shapes for", shaped)) if names)
        raise UserError(f"{ckpt}: the weights do not match its config.yaml ({detail}); the checkpoint is "
                        "damaged or its files come from different models; use another checkpoint")


def load_state(ckpt: str | Path, required: Iterable[str] = ()) -> dict[str, Any]:
    """The training state of a checkpoint (JSON and safetensors: nothing is unpickled).

    ``required`` names keys the caller needs; one that is missing is a one-line :class:`UserError`.
    """
    ckpt = Path(ckpt)
    refuse_old_format(ckpt)
    state = read_state(ckpt)
    missing = [k for k in required if k not in state]
    if is_sharded(ckpt) and "optimizer" in required:
        missing = [k for k in missing if k != "optimizer"] + ([] if OPTIMIZER_GROUPS in state else ["optimizer"])
    if missing:
        raise UserError(f"{ckpt / 'state.json'} lacks {', '.join(missing)}; it is damaged or was not written by "
                        "this trainer; resume from another checkpoint")
    return state


def check_checkpoint(ckpt: str | Path, required_state: Iterable[str] = ()) -> None:
    """Everything a resume reads from ``ckpt`` reads whole: meta.json, config.yaml, weights that match that
    config (headers and file sizes), and the training state with ``required_state``; else a UserError."""
    ckpt = Path(ckpt)
    refuse_old_format(ckpt)
    try:
        json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{ckpt / 'meta.json'} cannot be read ({_reason(e)})") from None
    check_weights(ckpt, load_config(ckpt / "config.yaml"))
    load_state(ckpt, required_state)
