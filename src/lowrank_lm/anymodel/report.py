"""What ``structurize`` did: parameters and FLOPs per token before and after, and each replaced module.

FLOPs are counted by running each linear layer on one token under ``torch.utils.flop_counter.FlopCounterMode``
(on the meta device too), so they are the real modules' matmul FLOPs, not a formula. The model totals are its
parameters (shared ones once) and the FLOPs of all its linear layers (the head included); attention's
score and value products, which grow with the sequence length, are not linear layers and are not counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class Replaced:
    """One replaced linear layer."""

    name: str
    source: str
    """``Linear`` or ``Conv1D`` (the class it replaced: merging back restores it)."""
    in_features: int
    out_features: int
    settings: dict[str, int]
    params_before: int
    params_after: int
    flops_before: int
    """Forward FLOPs per token, counted with FlopCounterMode."""
    flops_after: int
    error: float | None = None
    """With ``init="from_dense"``: ||W - W'||_F / ||W||_F of the structure's matrix W' against the dense W."""


@dataclass
class StructurizeReport:
    """Parameters and linear-layer FLOPs per token of the whole model before and after, and the replacements."""

    kind: str
    init: str
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    replaced: list[Replaced] = field(default_factory=list)
    kept_dense: list[str] = field(default_factory=list)
    """Matched layers left dense by ``keep_dense``."""

    def to_dict(self) -> dict:
        """The report as plain JSON-ready data."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines: totals, then one line per distinct replacement."""
        pct = lambda a, b: f"{100 * a / b:.1f}%" if b else "n/a"  # noqa: E731
        lines = [f"structurize {self.kind} ({self.init}): {len(self.replaced)} linear layers replaced"
                 + (f", {len(self.kept_dense)} kept dense" if self.kept_dense else ""),
                 f"  parameters {self.params_before:,} -> {self.params_after:,} "
                 f"({pct(self.params_after, self.params_before)})",
                 f"  linear FLOPs/token {self.flops_before:,} -> {self.flops_after:,} "
                 f"({pct(self.flops_after, self.flops_before)})"]
        for r in self.replaced:
            settings = ", ".join(f"{k}={v}" for k, v in r.settings.items())
            err = f", rel. error {r.error:.4f}" if r.error is not None else ""
            lines.append(f"  {r.name}: {r.in_features}->{r.out_features} {settings}, params {r.params_before:,} -> "
                         f"{r.params_after:,}{err}")
        return "\n".join(lines)


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, each shared tensor once."""
    return sum(p.numel() for p in model.parameters())


def module_flops(module: nn.Module, in_features: int) -> int:
    """Forward FLOPs of ``module`` on one token, counted by FlopCounterMode."""
    p = next(module.parameters())
    x = torch.zeros(1, in_features, device=p.device, dtype=p.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops())
