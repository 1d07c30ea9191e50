"""Training state (optimiser, RNG, loader positions, counters) as JSON plus safetensors: read without pickle.

``torch.save`` writes a pickle, and even ``torch.load(weights_only=True)`` runs a (restricted) unpickler over
whatever a shared checkpoint holds. Here a nested state of dicts, lists, tuples, numbers, strings and tensors
is written as two files that only data parsers read:

    state.json          the tree, each tensor replaced by {"$tensor": KEY}
    state.safetensors   the tensors under their KEYs

Dicts whose keys are not all strings (the optimiser numbers its parameters) and tuples are tagged so that
they come back as they went in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lowrank_lm.errors import UserError

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
_TENSOR, _ITEMS, _TUPLE = "$tensor", "$items", "$tuple"


def encode(tree: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """``tree`` as plain JSON data; its tensors go into ``tensors`` under their path in the tree."""
    if isinstance(tree, torch.Tensor):
        key = path or "root"
        tensors[key] = tree.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        return {_TENSOR: key}
    if isinstance(tree, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in tree):
            return {k: encode(v, tensors, f"{path}/{k}") for k, v in tree.items()}
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in tree):
            raise TypeError(f"state at {path or '/'}: dict keys must be str or int")
        return {_ITEMS: [[k, encode(v, tensors, f"{path}/{k}")] for k, v in tree.items()]}
    if isinstance(tree, tuple):
        return {_TUPLE: [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(tree)]}
    if isinstance(tree, list):
        return [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(tree)]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"state at {path or '/'} is a {type(tree).__name__}; only plain data and tensors are stored")


def decode(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`; a tag or a tensor key that is not there raises ``ValueError``."""
    if isinstance(data, dict):
        if _TENSOR in data:
            if set(data) != {_TENSOR} or data[_TENSOR] not in tensors:
                raise ValueError(f"unknown tensor reference {data!r}")
            return tensors[data[_TENSOR]]
        if _ITEMS in data:
            if set(data) != {_ITEMS}:
                raise ValueError("malformed $items")
            return {k: decode(v, tensors) for k, v in data[_ITEMS]}
        if _TUPLE in data:
            return tuple(decode(v, tensors) for v in data[_TUPLE])
        if any(k.startswith("$") for k in data):
            raise ValueError(f"unknown tag in {sorted(data)}")
        return {k: decode(v, tensors) for k, v in data.items()}
    if isinstance(data, list):
        return [decode(v, tensors) for v in data]
    return data


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as ``folder/state.json`` and ``folder/state.safetensors``."""
    tensors: dict[str, torch.Tensor] = {}
    tree = encode(state, tensors)
    save_file(tensors, folder / STATE_TENSORS)
    (folder / STATE_JSON).write_text(json.dumps(tree))


def has_state(folder: Path) -> bool:
    """Whether ``folder`` holds a training state in this format."""
    return (folder / STATE_JSON).is_file()


def read_state(folder: Path) -> dict[str, Any]:
    """The state written by :func:`write_state`; anything unreadable is a one-line :class:`UserError`."""
    try:
        tree = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(folder / STATE_TENSORS)
        state = decode(tree, tensors)
    except FileNotFoundError as e:
        raise UserError(f"{e.filename} is missing; this checkpoint cannot resume training") from None
    except (OSError, ValueError, TypeError, AttributeError, SafetensorError) as e:  # JSON/UTF-8 errors are ValueError
        raise UserError(f"{folder / STATE_JSON} is not a valid training state ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); resume from another checkpoint") from None
    if not isinstance(state, dict):
        raise UserError(f"{folder / STATE_JSON} is not a valid training state (not a mapping); "
                        "resume from another checkpoint")
    return state
