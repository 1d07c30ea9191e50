"""The AdamW optimiser of a run: one group (the paper's recipe), or under muP groups with learning-rate
multipliers and weight decay per parameter (:func:`lowrank_lm.mup.lr_rules`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lowrank_lm import mup
from lowrank_lm.model import Transformer


class MultipliedAdamW(torch.optim.AdamW):
    """AdamW whose groups carry an ``lr_mult``: each step uses ``lr x lr_mult``.

    The training loop sets one scheduled ``lr`` on every group; the multiplier is applied only inside
    :meth:`step`, so ``lr`` keeps meaning the base learning rate (in logs and in saved optimiser states) and
    ``lr_mult`` is saved beside it in each group.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        base = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g.get("lr_mult", 1.0)
        try:
            return super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, base, strict=True):
                g["lr"] = lr


def mup_groups(model: Transformer, weight_decay: float) -> list[dict]:
    """Parameter groups in ``model.named_parameters()`` order, consecutive parameters with the same rule merged.

    Keeping the model's order means the optimiser numbers parameters as a single group would, which
    :func:`lowrank_lm.checkpoint.sharded.optimizer_state_by_name` relies on to key a saved state by name.
    """
    rules = mup.lr_rules(model)
    groups: list[dict] = []
    for p in model.parameters():
        mult, decays = rules[id(p)]
        wd = weight_decay if decays else 0.0
        if groups and groups[-1]["lr_mult"] == mult and groups[-1]["weight_decay"] == wd:
            groups[-1]["params"].append(p)
        else:
            groups.append({"params": [p], "lr_mult": mult, "weight_decay": wd})
    return groups


def build_adamw(model: Transformer, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                fused: bool) -> torch.optim.Optimizer:
    """AdamW over every parameter of ``model``: one group with weight decay on everything under the standard
    parametrisation (the paper's), the muP groups otherwise."""
    if not mup.enabled(model.cfg):
        return torch.optim.AdamW(list(model.parameters()), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                 fused=fused)
    return MultipliedAdamW(mup_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)
