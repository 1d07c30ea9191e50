"""Coordinate check: the RMS of every layer's output against model width, after each of a few training steps.

The standard test of a muP implementation (Yang et al. 2022, Tensor Programs V, section 8 and figure 5): under
muP every activation stays the same size as the model widens, so log RMS against log width is flat; under the
standard parametrisation the logits (and the updates of hidden layers) grow with width.

Each width trains from the same seed, on the config's training data, for a few AdamW steps at the constant
``train.lr`` (no warm-up and no gradient clipping: both would hide or add width dependence), in fp32 on
``train.device`` (the command's --device, the CPU by default). After step 0 (the init) and after each step,
one fixed probe batch goes through the model and forward hooks record the RMS of: the embedding's output,
each block's attention and FFN outputs, each structured layer's first factor
(:meth:`StructuredLinear.inner`) and its output, and the logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowrank_lm.config import Config
from lowrank_lm.errors import UserError
from lowrank_lm.layers import DenseLinear, StructuredLinear
from lowrank_lm.model import Transformer
from lowrank_lm.resolve import load_config


@dataclass(frozen=True)
class Record:
    """The RMS of one layer's output on the probe batch after ``step`` steps at ``width``."""

    layer: str
    step: int
    width: int
    rms: float

    def to_dict(self) -> dict:
        """The record as a JSON row of coord_check.json."""
        return {"layer": self.layer, "step": self.step, "width": self.width, "rms": self.rms}


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def _watch(model: Transformer, seen: dict[str, float]) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks that write the RMS of every recorded output into ``seen`` (layer name -> RMS)."""

    def out_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[name] = _rms(out)
        return hook

    def factor_hook(name: str) -> Callable:
        def hook(layer: StructuredLinear, args: tuple, out: torch.Tensor) -> None:
            inner = layer.inner(args[0])
            if inner is not None:
                seen[f"{name}.inner"] = _rms(inner)
            seen[name] = _rms(out)
        return hook

    handles = [model.embed.register_forward_hook(out_hook("embed"))]
    for i, block in enumerate(model.blocks):
        handles.append(block.get_submodule("attn").register_forward_hook(out_hook(f"blocks.{i}.attn")))
        handles.append(block.get_submodule("ffn").register_forward_hook(out_hook(f"blocks.{i}.ffn")))
    for name, module in model.named_modules():
        if isinstance(module, StructuredLinear) and not isinstance(module, DenseLinear):
            handles.append(module.register_forward_hook(factor_hook(name)))
    return handles


def width_config(config: str | Path | None, overrides: list[str], width: int, device: str = "cpu") -> Config:
    """The config at hidden_dim ``width``: explicit attn_dim / ffn_dim grow in proportion; fp32 on ``device``."""
    base = load_config(config, overrides)
    m, extra = base.model, [f"model.hidden_dim={width}", "train.precision=fp32", f"train.device={device}"]
    for key in ("attn_dim", "ffn_dim"):
        value = getattr(m, key)
        if value is not None:
            if (value * width) % m.hidden_dim:
                raise UserError(f"model.{key}={value} does not scale to width {width} (x {width}/{m.hidden_dim} is "
                                f"not whole); pick widths that keep it whole, or leave model.{key} unset")
            extra.append(f"model.{key}={value * width // m.hidden_dim}")
    return load_config(config, list(overrides) + extra)


def check_width(cfg: Config, data_dir: Path, steps: int) -> list[Record]:
    """Train ``cfg`` for ``steps`` steps and record every layer's RMS on a probe batch after each (0 = init)."""
    from lowrank_lm.data import TokenLoader
    from lowrank_lm.train.optim import build_adamw

    t, width = cfg.train, cfg.model.hidden_dim
    device = torch.device(t.device)
    torch.manual_seed(t.seed)
    model = Transformer(cfg.model).to(device)
    opt = build_adamw(model, t.lr, t.betas, t.eps, t.weight_decay, fused=False)
    loader = TokenLoader(data_dir, "train", cfg.model.seq_len, t.micro_batch_size or t.global_batch_size, t.seed, 0, 1)
    probe = loader.next_batch()[0].to(device)
    seen: dict[str, float] = {}
    handles = _watch(model, seen)
    records: list[Record] = []
    try:
        for step in range(steps + 1):
            if step:
                x, y = loader.next_batch()
                model.train()
                model(x.to(device), y.to(device)).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            model.eval()
            seen.clear()
            with torch.no_grad():
                seen["logits"] = _rms(model(probe))
            records += [Record(name, step, width, rms) for name, rms in seen.items()]
    finally:
        for h in handles:
            h.remove()
    return records


def slopes(records: list[Record], step: int) -> dict[str, float]:
    """Per layer, the least-squares slope of log RMS against log width at ``step`` (needs two widths or more)."""
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.step == step:
            by_layer.setdefault(r.layer, []).append((math.log(r.width), math.log(max(r.rms, 1e-30))))
    out = {}
    for layer, pts in by_layer.items():
        mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
        var = sum((p[0] - mx) ** 2 for p in pts)
        out[layer] = sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else float("nan")
    return out


def plot(records: list[Record], path: Path) -> Path:
    """Draw :func:`coord_figure` to ``path`` (PNG; needs matplotlib)."""
    from lowrank_lm import plotting

    if plotting.pyplot() is None:
        raise UserError("the coord-check plot needs matplotlib: pip install 'lowrank-lm[analysis]' "
                        "(or pass --json without --out)")
    return plotting.save(coord_figure(records), path)


def coord_figure(records: list[Record]) -> Any:
    """Log RMS against width, one line per layer, one panel per step, in the project's style: flat lines are
    widths that transfer, rising lines are activations that grow with width."""
    from lowrank_lm import plotting

    with plotting.style() as plt:
        steps = sorted({r.step for r in records})
        layers = list(dict.fromkeys(r.layer for r in records))
        colours = plotting.distinct_colours(len(layers))
        fig, axes = plt.subplots(1, len(steps), figsize=(4 * len(steps) + 1.5, 4), sharey=True, squeeze=False)
        for i, (ax, step) in enumerate(zip(axes[0], steps, strict=True)):
            for layer, colour in zip(layers, colours):
                pts = sorted((r.width, r.rms) for r in records if r.step == step and r.layer == layer)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour, label=layer)
            ax.set(xscale="log", yscale="log")
            plotting.finish(ax, f"step {step}", "width (hidden_dim)",
                            "RMS of the layer's output" if i == 0 else None, legend=False)
        axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.suptitle("coordinate check: activation size against width", fontsize=10)
        fig.tight_layout()
    return fig
