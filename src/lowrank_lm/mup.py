"""Maximal-update parametrisation (muP) of the Transformer, structure-aware: what ``model.parametrization=mup``
changes in the model, and the Adam learning-rate multiplier and weight decay of every parameter.

Every rule and its source is in docs/mup.md. In short, with width multiplier m = hidden_dim / mup_base_width:

* hidden weights (attention and FFN linears, each structured factor or core): N(0, sqrt(1/fan_in) min(1,
  sqrt(fan_out/fan_in))) from the factor's own fan-in and fan-out as its structure declares them
  (:meth:`StructuredLinear.factors`); Adam learning rate x (1/m) d_in / (fan_in x factors) (d_in the layer's
  input width): 1/m for a dense layer, the BTT authors' structure-aware multiplier for a factor;
* embeddings: N(0, init_std), learning rate x 1; the output layer: zero-initialised, learning rate x 1/m when
  untied; tied to the embedding, the logits are multiplied by 1/m instead (the weight keeps the embedding's
  rules);
* attention logits q.k sqrt(d_base) / head_dim, d_base the head width at the base width (= 1/sqrt(head_dim)
  there); biases and norm weights: learning rate x 1 and no weight decay; matrices decay at train.weight_decay,
  which AdamW multiplies by each group's learning rate, so the decay follows the multipliers.

Only the rules live here; :mod:`lowrank_lm.model` applies the forward ones and
:func:`lowrank_lm.train.optim.build_adamw` the optimiser ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.layers.init import mup_std, normal_

if TYPE_CHECKING:
    from lowrank_lm.config import ModelConfig


def enabled(cfg: ModelConfig) -> bool:
    """Whether the model is in muP."""
    return cfg.parametrization == "mup"


def width_mult(cfg: ModelConfig) -> float:
    """m = hidden_dim / mup_base_width (every width of the model is taken to grow with hidden_dim)."""
    assert cfg.mup_base_width is not None, "validation requires mup_base_width under mup"
    return cfg.hidden_dim / cfg.mup_base_width


def attention_scale(cfg: ModelConfig) -> float | None:
    """The q.k scale: sqrt(base head dim) / head_dim under muP (1/sqrt(head_dim) at the base width); None (the
    standard 1/sqrt(head_dim) of scaled_dot_product_attention) otherwise."""
    if not enabled(cfg):
        return None
    base_head_dim = cfg.head_dim / width_mult(cfg)
    return math.sqrt(base_head_dim) / cfg.head_dim


def readout_scale(cfg: ModelConfig) -> float | None:
    """The multiplier of the logits: 1/m for a muP model whose output layer is the (tied) embedding, else None."""
    if not enabled(cfg) or not cfg.tie_embeddings:
        return None
    return 1.0 / width_mult(cfg)


def _linears(model: nn.Module) -> list[tuple[nn.Module, bool, str | None]]:
    """Every attention and FFN linear, whether it ends a residual branch (attention out, FFN down), and its
    part's init (model.attn.init / model.ffn.init)."""
    cfg, out = model.cfg, []
    for block in model.blocks:
        out += [(block.attn.qkv, False, cfg.attn.init), (block.attn.out, True, cfg.attn.init)]
        out += [(layer, layer is block.ffn.down, cfg.ffn.init)
                for layer in (block.ffn.up, block.ffn.gate, block.ffn.down) if layer is not None]
    return out


@torch.no_grad()
def init_(model: nn.Module) -> None:
    """Draw the hidden weights at their muP scales and zero the untied output layer (and, with the ``zero_out``
    init, the last factor of every residual branch's output layer). The embedding keeps N(0, init_std)."""
    for layer, output_side, init in _linears(model):
        zero = output_side and init == "zero_out"
        if isinstance(layer, StructuredLinear):
            layer.mup_init_(zero_last=zero)
        elif zero:
            layer.weight.zero_()
        else:
            normal_(layer.weight, mup_std(layer.in_features, layer.out_features))
    if model.lm_head is not None:
        model.lm_head.weight.zero_()


def _factor_mults(layer: StructuredLinear, m: float) -> dict[int, float]:
    """id(parameter) -> learning-rate multiplier of a layer's factors (and of a self-guided guide, a dense
    weight of the layer's widths)."""
    factors = layer.factors()
    mults = {id(getattr(layer, f.param)): layer.in_features / (f.fan_in * len(factors)) / m for f in factors}
    guide = getattr(layer, "guide", None)
    if isinstance(guide, nn.Parameter):
        mults[id(guide)] = 1.0 / m
    return mults


def lr_rules(model: nn.Module) -> dict[int, tuple[float, bool]]:
    """id(parameter) -> (Adam learning-rate multiplier, whether weight decay applies) for every parameter."""
    m = width_mult(model.cfg)
    mults: dict[int, float] = {id(model.embed.weight): 1.0}
    if model.lm_head is not None:
        mults[id(model.lm_head.weight)] = 1.0 / m
    for module in model.modules():
        if isinstance(module, StructuredLinear):
            mults.update(_factor_mults(module, m))
        elif isinstance(module, nn.Linear) and module is not model.lm_head:
            mults[id(module.weight)] = 1.0 / m
    rules: dict[int, tuple[float, bool]] = {}
    for name, p in model.named_parameters():
        if p.dim() < 2:
            rules[id(p)] = (1.0, False)  # biases and norm weights: O(1) learning rate, no decay
        elif id(p) in mults:
            rules[id(p)] = (mults[id(p)], True)
        else:
            raise RuntimeError(f"no muP rule for parameter {name} of shape {tuple(p.shape)}")
    return rules
