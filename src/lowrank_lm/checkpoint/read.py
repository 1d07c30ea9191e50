"""Reading checkpoints of either format: the model, its weights' names and shapes, the training state.

Every reader here takes a single-file checkpoint and a sharded one alike (see
:mod:`lowrank_lm.checkpoint.layout` for what lives where). No file of a checkpoint is ever unpickled:
checkpoints of earlier releases are refused with the command that converts them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from lowrank_lm.checkpoint.commit import reason
from lowrank_lm.checkpoint.layout import (
    CONFIG_FILE,
    DCP_DIR,
    META_FILE,
    MODEL_FILE,
    is_old_sharded,
    is_sharded,
    refuse_old_format,
    resolve_checkpoint,
)
from lowrank_lm.checkpoint.sharded import OPTIMIZER_GROUPS, load_sharded, sharded_tensor_shapes
from lowrank_lm.config import Config
from lowrank_lm.errors import UserError
from lowrank_lm.model import Transformer
from lowrank_lm.resolve import load_config
from lowrank_lm.safe_state import read_state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Config, Path]:
    """Build the model of a checkpoint (or a run's newest one) and load its weights, no pickle involved."""
    ckpt = resolve_checkpoint(path)
    if is_old_sharded(ckpt):  # an old state.pt beside model.safetensors is harmless here: it is never read
        refuse_old_format(ckpt)
    cfg = load_config(ckpt / CONFIG_FILE)
    check_weights(ckpt, cfg)  # names and shapes first: a mismatch is one line, not a traceback
    model = Transformer(cfg.model)
    if is_sharded(ckpt):
        load_sharded(ckpt, model.to(device))
        return model, cfg, ckpt
    try:
        weights = load_file(ckpt / MODEL_FILE, device=str(device))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{ckpt / MODEL_FILE} cannot be read ({e}); use another checkpoint") from None
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
            with safe_open(ckpt / MODEL_FILE, framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        where = ckpt / (DCP_DIR if is_sharded(ckpt) else MODEL_FILE)
        raise UserError(f"{where} cannot be read ({reason(e)}); it is truncated or not a checkpoint; use "
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
        json.loads((ckpt / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{ckpt / META_FILE} cannot be read ({reason(e)})") from None
    check_weights(ckpt, load_config(ckpt / CONFIG_FILE))
    load_state(ckpt, required_state)
