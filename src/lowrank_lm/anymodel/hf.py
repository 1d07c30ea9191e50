"""Structurized transformers models: load one saved with ``save_pretrained``, and merge one back onto its stock class.

``save_pretrained`` writes the structured factors (``...mlp.up_proj.u`` / ``.v``, ...) into the safetensors
file and the replacements into config.json (:data:`~lowrank_lm.anymodel.core.RECORD_KEY`). A stock
``from_pretrained`` would build dense layers and drop the factors, so :func:`load_structurized` builds the
stock model from the config, rebuilds the recorded structures and loads the weights into them.
:func:`merge_structures` multiplies linear structures back into dense layers of the original class
(``nn.Linear`` or GPT-2's ``Conv1D``): the model is then a stock model, with the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lowrank_lm.anymodel.core import RECORD_KEY, apply_record
from lowrank_lm.errors import UserError
from lowrank_lm.layers.base import StructuredLinear


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("this needs transformers; install it with pip install 'lowrank-lm[hf]'") from None
    return transformers


def load_structurized(path: str | Path, **kwargs) -> nn.Module:
    """A structurized transformers model saved with ``save_pretrained`` (its config records the structures).

    transformers' own ``from_pretrained`` loads it (key renames of newer transformers versions, dtypes and
    ``device_map`` included: ``kwargs`` go to it), into a subclass of the stock class whose constructor
    rebuilds the recorded structures before the weights are read.
    """
    transformers = _transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json; give a folder written by save_pretrained")
    config = transformers.AutoConfig.from_pretrained(str(path))
    record = getattr(config, RECORD_KEY, None)
    if not record:
        raise UserError(f"{path} records no structures ({RECORD_KEY} is not in its config.json); it is a stock "
                        "model: load it with AutoModelForCausalLM.from_pretrained")
    stock = transformers.AutoModelForCausalLM._model_mapping[type(config)]
    return _structured_class(stock).from_pretrained(str(path), **kwargs).eval()


def _structured_class(stock: type) -> type:
    """``stock`` with the recorded structures built at construction (same name: transformers looks its key
    renames up by class name)."""
    from transformers import PreTrainedModel

    def __init__(self, config, *args, **kwargs) -> None:
        stock.__init__(self, config, *args, **kwargs)
        apply_record(self, getattr(config, RECORD_KEY))
        for sub in self.modules():  # the model and its base model each run their own init on their modules
            if isinstance(sub, PreTrainedModel):
                sub._init_weights = _skipping_structures(sub._init_weights)

    return type(stock.__name__, (stock,), {"__init__": __init__, "__module__": stock.__module__})


def _skipping_structures(init: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
    """A stock ``_init_weights`` that leaves out the containers of structures: it may read a child's ``.weight``
    (GPT-2 rescales ``c_proj.weight``), which a structure does not have. They hold no weights of their own,
    and the checkpoint holds the structures'."""
    def init_weights(module: nn.Module) -> None:
        if not any(isinstance(child, StructuredLinear) for child in module.children()):
            init(module)

    return init_weights


@torch.no_grad()
def merge_structures(model: nn.Module) -> int:
    """Replace every structured layer by the dense layer it computes, of the class it replaced; returns how many.

    Refuses (one line, model untouched) when a layer is not linear (it has no merged weight).
    """
    record = getattr(getattr(model, "config", None), RECORD_KEY, None) or {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, StructuredLinear)]
    merged = []
    for name, layer in layers:  # every weight first: a refusal leaves the model as it was
        try:
            merged.append(layer.merged_weight())
        except TypeError:
            raise UserError(f"{name} ({type(layer).__name__}) is not linear: it has no dense weight to merge "
                            "into") from None
    for (name, layer), w in zip(layers, merged, strict=True):
        dense = _dense(w, layer.bias, record.get(name, {}).get("source", "Linear"))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, dense)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, RECORD_KEY):
        delattr(config, RECORD_KEY)
    return len(layers)


def _dense(w: torch.Tensor, bias: torch.Tensor | None, source: str) -> nn.Module:
    """An ``nn.Linear`` (or ``Conv1D``, weight stored (in, out)) holding ``w`` (out, in) and ``bias``."""
    if source == "Conv1D":
        conv = _transformers().pytorch_utils.Conv1D(w.shape[0], w.shape[1]).to(w.device, w.dtype)
        conv.weight.copy_(w.T)
        if bias is not None:
            conv.bias.copy_(bias)
        else:
            conv.bias.zero_()  # Conv1D always has a bias: zeros compute the same
        return conv
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    lin.weight.copy_(w)
    if bias is not None:
        lin.bias.copy_(bias)
    return lin
