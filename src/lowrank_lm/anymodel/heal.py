"""Perplexity of a transformers model on prepared validation tokens, and healing a compressed one.

Healing is a short training run on a prepared dataset, self-guided with the original dense weights as the
guides: each replaced layer computes ``a (W0 x + b) + (1 - a) S(x)``, ``a`` decaying from 1 to 0 over the
first ``guide_ratio`` of the steps (:func:`lowrank_lm.train.self_guided.attach_guide` with ``start=W0``). At
``a = 1`` the model is the original one, so healing starts from the original perplexity and moves the
weight onto the structures gradually; the guides train too and leave the model when ``a`` reaches 0.
The guides run in every step (no ``reduce_flop`` coin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowrank_lm.errors import UserError
from lowrank_lm.layers.base import StructuredLinear


@dataclass
class HealConfig:
    """The healing run (a YAML file of these keys; every one optional)."""

    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 10
    """Linear warmup, then cosine decay to a tenth of ``lr``."""
    guide_ratio: float = 0.5
    """Share of the steps with the original weights as guides (0: no guidance)."""
    schedule: str = "cosine"
    """How the guides' weight decays from 1 to 0: cosine or linear."""
    seed: int = 0

    @classmethod
    def load(cls, path: str | Path) -> HealConfig:
        """Read a YAML file; unknown keys and bad values are one-line errors."""
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise UserError(f"cannot read the heal config {path}: {e.strerror}") from None
        except yaml.YAMLError:
            raise UserError(f"{path} is not valid YAML") from None
        known = {f.name: f.type for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) - set(known):
            extra = sorted(set(raw) - set(known)) if isinstance(raw, dict) else ["(not a mapping)"]
            raise UserError(f"{path}: unknown heal setting {extra[0]}; the settings are {', '.join(known)}")
        cfg = cls(**raw)
        cfg.check(str(path))
        return cfg

    def check(self, where: str = "heal config") -> None:
        """Raise a one-line UserError naming ``where`` for a setting out of range."""
        for name in ("steps", "batch_size", "warmup_steps", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (1 if name in ("steps", "batch_size")
                                                                                    else 0):
                raise UserError(f"{where}: {name} must be a whole number (>= 1 for steps / batch_size), got "
                                f"{getattr(self, name)!r}")
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise UserError(f"{where}: lr must be a positive number, got {self.lr!r}")
        if not isinstance(self.guide_ratio, (int, float)) or not 0 <= self.guide_ratio <= 1:
            raise UserError(f"{where}: guide_ratio must be between 0 and 1, got {self.guide_ratio!r}")
        if self.schedule not in ("cosine", "linear"):
            raise UserError(f"{where}: schedule must be cosine or linear, got {self.schedule!r}")


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction=reduction)


@torch.no_grad()
def perplexity(model: nn.Module, data_dir: str | Path, seq_len: int, batch_size: int = 8,
               max_tokens: int | None = None) -> dict:
    """Mean token cross-entropy of a causal LM over the validation split: loss, ppl, tokens."""
    from lowrank_lm.data import validation_batches

    was = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    try:
        for x, y in validation_batches(data_dir, seq_len, batch_size, max_tokens):
            total += float(_loss(model, x.to(device), y.to(device), "sum"))
            count += int((y != -1).sum())
    finally:
        model.train(was)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count}


def _lr(cfg: HealConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def heal(model: nn.Module, originals: dict[str, torch.Tensor], data_dir: str | Path, seq_len: int,
         cfg: HealConfig) -> list[float]:
    """Train ``model`` on the train split for ``cfg.steps`` steps, the replaced layers guided by ``originals``
    ({module name: its dense (out, in) weight}); returns the training losses."""
    from lowrank_lm.data import TokenLoader
    from lowrank_lm.train.schedule import guide_alpha_at
    from lowrank_lm.train.self_guided import attach_guide

    torch.manual_seed(cfg.seed)
    loader = TokenLoader(data_dir, "train", seq_len, cfg.batch_size, cfg.seed)
    guided_steps = int(cfg.guide_ratio * cfg.steps)
    layers: dict[str, StructuredLinear] = {n: model.get_submodule(n) for n in originals}
    hooks = {n: attach_guide(layer, False, originals[n]) for n, layer in layers.items()} if guided_steps else {}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for step in range(cfg.steps):
        if hooks and step == guided_steps:  # guidance over: the guides leave the model and the optimiser
            hooks = _drop_guides(layers, hooks, opt)
        for n, hook in hooks.items():
            hook.set_alpha(layers[n], guide_alpha_at(step, guided_steps, cfg.schedule))
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        x, y = loader.next_batch()
        loss = _loss(model, x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _drop_guides(layers, hooks, opt)  # guide_ratio 1: they stay to the last step
    model.eval()
    return losses


def _drop_guides(layers: dict[str, StructuredLinear], hooks: dict, opt: torch.optim.Optimizer) -> dict:
    """Remove every guide from its layer and from the optimiser; returns the (empty) hooks."""
    from lowrank_lm.train.self_guided import detach_guide

    for n, hook in hooks.items():
        guide = layers[n].guide
        detach_guide(layers[n], hook)
        opt.state.pop(guide, None)
        for group in opt.param_groups:
            group["params"] = [p for p in group["params"] if p is not guide]
    return {}
