"""Pre-merge for inference: a structured layer keeps its merged dense weight for calls with few tokens.

A structured layer is linear, so at inference it can keep the dense matrix it computes beside its factors
and use whichever is faster for the call at hand (reference section 3.2): for a few tokens one dense matmul
can beat two smaller, launch- or memory-bound ones. :class:`PremergedLinear` wraps a layer to do that; it takes
the layer's place in its parent, so the layer itself stays a plain matrix product. The wrapper saves and
loads state under the layer's own keys, so a pre-merged model's state dict is the model's.

One name per concept: :func:`premerge` (the act, on a whole model), :class:`PremergedLinear` (the wrapper it
puts in place of a layer), :func:`premerged_layers` (the wrappers of a model) and :func:`unmerge` (undo).
The model does not import this module: pre-merge wraps it from outside.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lowrank_lm.layers import DenseLinear, StructuredLinear, registry
from lowrank_lm.model import Transformer

_INNER = "structured."  # the wrapped layer's attribute name, as it appears in state-dict keys


class PremergedLinear(nn.Module):
    """``layer`` with its merged weight used in eval mode for calls of at most ``max_tokens`` tokens."""

    merged: torch.Tensor  # a buffer (nn.Module's attribute typing would make it Tensor | Module)

    def __init__(self, layer: StructuredLinear, max_tokens: int) -> None:
        super().__init__()
        self.structured = layer
        self.max_tokens = max_tokens
        with torch.no_grad():
            self.register_buffer("merged", layer.merged_weight(), persistent=False)
        self.register_state_dict_post_hook(_drop_inner_prefix)
        self.register_load_state_dict_pre_hook(_add_inner_prefix)
        # a new module starts in training mode; take the layer's, or an eval model wrapped after .eval() would
        # never use its merged weights
        self.train(layer.training)

    @property
    def in_features(self) -> int:
        """The wrapped layer's input width."""
        return self.structured.in_features

    @property
    def out_features(self) -> int:
        """The wrapped layer's output width."""
        return self.structured.out_features

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped layer's bias."""
        return self.structured.bias

    def num_matrix_params(self) -> int:
        """The structured layer's weights: pre-merging changes how a call is computed, not the model's size."""
        return self.structured.num_matrix_params()

    def uses_merged(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` takes the merged weight: eval mode and at most ``max_tokens`` tokens."""
        return not self.training and x.numel() // self.in_features <= self.max_tokens

    def dense_tail(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(h, W) with ``self(x) = h W^T + bias``, as :meth:`StructuredLinear.dense_tail`; the fused bias + GELU
        paths of :mod:`lowrank_lm.layers.fused` put their epilogue on it."""
        if self.uses_merged(x):
            return x, self.merged.to(x.dtype)
        return self.structured.dense_tail(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_merged(x):
            return F.linear(x, self.merged.to(x.dtype), self.bias)
        return self.structured(x)

    def extra_repr(self) -> str:
        return f"max_tokens={self.max_tokens}"


def _drop_inner_prefix(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state if k.startswith(prefix + _INNER)]:
        state[prefix + key[len(prefix + _INNER):]] = state.pop(key)


def _add_inner_prefix(module: nn.Module, state: dict, prefix: str, *args) -> None:
    for key in [k for k in state if k.startswith(prefix) and not k.startswith(prefix + _INNER)]:
        state[prefix + _INNER + key[len(prefix):]] = state.pop(key)


def premerge(model: nn.Module, max_tokens: int | Callable[[StructuredLinear], int] | None = None) -> dict[str, int]:
    """Wrap every structured (non-dense) linear of ``model`` in :class:`PremergedLinear`; returns {name: max tokens}.

    ``max_tokens`` is one limit for all layers or a function of the layer (e.g. a calibrated crossover); a
    layer whose limit is 0 stays unwrapped, so 0 undoes pre-merge. None takes a Transformer's
    ``model.ffn.premerge_max_tokens`` (unset: 0). A Transformer with a structure that has no merged weight
    (not linear) is a UserError unless the limit is 0. Earlier pre-merges are undone first, so calling it again
    after the factors changed (or with another limit) takes the new merged weights. Call it after moving the
    model to its device and dtype.
    """
    if isinstance(model, Transformer):
        if max_tokens is None:
            max_tokens = model.cfg.ffn.premerge_max_tokens or 0
        if callable(max_tokens) or max_tokens:
            registry.require_linear(model.cfg, "pre-merge")
    elif max_tokens is None:
        raise ValueError("premerge of a module that is not a Transformer needs max_tokens (it has no config)")
    unmerge(model)
    chosen: dict[str, int] = {}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, StructuredLinear) and not isinstance(child, DenseLinear):
                n = max_tokens(child) if callable(max_tokens) else max_tokens
                if n > 0:
                    setattr(parent, name, PremergedLinear(child, n))
                    chosen[f"{parent_name}.{name}" if parent_name else name] = n
    return chosen


def unmerge(model: nn.Module) -> None:
    """Put every pre-merged layer of ``model`` back in place of its wrapper (and free the merged weights)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PremergedLinear):
                setattr(parent, name, child.structured)


def premerged_layers(model: nn.Module) -> list[PremergedLinear]:
    """The pre-merged layers of ``model``."""
    return [m for m in model.modules() if isinstance(m, PremergedLinear)]
