"""``structurize``: replace the linear layers of any PyTorch model by registry structures.

The replacement is a registry layer (a :class:`~lowrank_lm.layers.base.StructuredLinear`): its forward is
the structure's matrix product plus the original bias, for any input shape (..., in), as ``nn.Linear`` and
GPT-2's ``Conv1D`` compute. Every argument is checked and every replacement built before the model is
touched: a refusal leaves the model as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lowrank_lm.anymodel.report import Replaced, StructurizeReport, count_params, module_flops
from lowrank_lm.anymodel.targets import block_index, is_linear, select
from lowrank_lm.errors import UserError
from lowrank_lm.layers import registry
from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.layers.structure import SettingError, Structure

INITS = ("fresh", "from_dense")
RECORD_KEY = "lowrank_lm_structures"
"""The attribute of a transformers config that records the replacements ({name: {kind, settings, source}}):
``save_pretrained`` writes it into config.json and :func:`lowrank_lm.load_structurized` reads it."""


@dataclass
class _Settings:
    """What a structure's build and check read (the registry's Settings protocol)."""

    kind: str
    rank: int | None = None
    num_blocks: int | None = None
    section: str = "structurize"


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of an ``nn.Linear`` or a ``Conv1D`` (which stores it (in, out))."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.T


def widths(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a linear layer."""
    out, n_in = dense_weight(module).shape
    return n_in, out


def build_layer(kind: str, settings: dict[str, int], n_in: int, n_out: int, bias: bool,
                like: torch.Tensor) -> StructuredLinear:
    """A registry layer on ``like``'s device and dtype, not yet initialised."""
    with torch.device(like.device):
        layer = registry.get(kind).build(n_in, n_out, _Settings(kind, **settings), bias)
    return layer.to(like.dtype)


def _checked(spec: Structure, settings: dict[str, int], n_in: int, n_out: int, name: str) -> dict[str, int]:
    try:
        spec.check(_Settings(spec.name, **settings), n_in, n_out)
    except SettingError as e:
        raise UserError(f"{name} ({n_in} -> {n_out}): {e}") from None
    return settings


def _solve(spec: Structure, fraction: float, fixed: dict[str, int], n_in: int, n_out: int, rank_multiple: int,
           name: str) -> dict[str, int]:
    """The candidate setting whose weights are nearest ``fraction`` of this layer's dense weights (meta count)."""
    try:
        cands = spec.candidates(n_in, n_out, rank_multiple, fixed.get("num_blocks"))
    except SettingError as e:
        raise UserError(f"{name} ({n_in} -> {n_out}): {e}") from None
    best: tuple[float, dict[str, int]] | None = None
    for cand in cands:
        settings = {**fixed, **cand}
        try:
            spec.check(_Settings(spec.name, **settings), n_in, n_out)
        except SettingError:
            continue
        with torch.device("meta"):
            layer = spec.build(n_in, n_out, _Settings(spec.name, **settings), False)
        share = layer.num_matrix_params() / (n_in * n_out)
        if best is None or abs(share - fraction) < best[0] - 1e-12:  # ties: the smaller setting
            best = (abs(share - fraction), settings)
    if best is None:
        raise UserError(f"no {spec.name} setting fits {name} ({n_in} -> {n_out}) with rank_multiple={rank_multiple}; "
                        "lower rank_multiple, give the settings yourself, or leave this layer out of targets")
    return best[1]


def _sizing(spec: Structure, fraction: float | None, rank: int | None, num_blocks: int | None) -> dict[str, int]:
    """The settings given by the user (checked against what the kind reads); with a fraction, the fixed ones."""
    given = {k: v for k, v in (("rank", rank), ("num_blocks", num_blocks)) if v is not None}
    for key in given:
        if key not in spec.settings:
            raise UserError(f"{key} does not apply to kind {spec.name} (it reads {', '.join(spec.settings) or 'none'})")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise UserError(f"fraction must be between 0 and 1 (e.g. 0.5), got {fraction}")
        both = [k for k in given if k in spec.solved]
        if both:
            raise UserError(f"{both[0]}={given[both[0]]} and fraction={fraction} both size the {spec.name} layers; "
                            "give one of them")
        if "num_blocks" in spec.settings and "num_blocks" not in spec.solved:
            given.setdefault("num_blocks", spec.defaults["num_blocks"])
    elif not given:
        raise UserError(f"give fraction=... or the size of kind {spec.name} ({', '.join(spec.settings)})")
    return given


def _project(layer: StructuredLinear, w: torch.Tensor, name: str) -> float:
    """Start ``layer`` from the dense ``w``; the relative Frobenius error of the result."""
    layer.from_dense_(w)
    norm = float(torch.linalg.matrix_norm(w.float()))
    return float(torch.linalg.matrix_norm(layer.merged_weight().float() - w.float())) / norm if norm else 0.0


def _default_std(model: nn.Module) -> float:
    """The model's own init std when its config says (transformers' initializer_range), else 0.02."""
    return float(getattr(getattr(model, "config", None), "initializer_range", 0.02) or 0.02)


def _check_args(model: nn.Module, spec: Structure, init: str, keep_dense: int) -> None:
    if not spec.structured:
        raise UserError(f"kind {spec.name} is the dense baseline; choose one of "
                        f"{', '.join(registry.structured_kinds())}")
    if init not in INITS:
        raise UserError(f"init={init!r}: choose one of {', '.join(INITS)}")
    if init == "from_dense":
        if spec.name not in projectable_kinds():
            raise UserError(f"init='from_dense' is not defined for kind {spec.name} (no best approximation of a dense "
                            f"weight is known for it); use init='fresh' or a kind in {', '.join(projectable_kinds())}")
        if any(p.is_meta for p in model.parameters()):
            raise UserError("init='from_dense' needs the dense weights, and this model is on the meta device; "
                            "load its weights first, or use init='fresh'")
    if not isinstance(keep_dense, int) or keep_dense < 0:
        raise UserError(f"keep_dense must be a block count >= 0, got {keep_dense!r}")


def projectable_kinds() -> list[str]:
    """The structured kinds whose layer defines the best approximation of a dense weight (``from_dense_``)."""
    def defines(kind: str) -> bool:
        with torch.device("meta"):
            layer = registry.get(kind).build(16, 16, _Settings(kind, 4, 4), False)
        return type(layer).from_dense_ is not StructuredLinear.from_dense_
    return [k for k in registry.structured_kinds() if defines(k)]


def structurize(model: nn.Module, kind: str, *, fraction: float | None = None, rank: int | None = None,
                num_blocks: int | None = None, targets: str | Sequence[str] = "ffn", keep_dense: int = 0,
                init: str = "fresh", std: float | None = None, rank_multiple: int = 8) -> StructurizeReport:
    """Replace the linear layers of ``model`` that ``targets`` picks by ``kind`` layers, in place.

    ``fraction`` sizes each layer to the setting whose weights are nearest that share of its dense weights
    (ranks in multiples of ``rank_multiple``); or give ``rank`` / ``num_blocks``. ``keep_dense=k`` leaves the
    layers of blocks 0..k-1 dense (the block is the first number in the module name). ``init="fresh"`` uses
    the structure's default init (std ``std``, default the model config's initializer_range or 0.02);
    ``"from_dense"`` the best approximation of the dense weight the structure holds (truncated SVD for
    lowrank). Keeps each layer's device (meta included) and dtype, and its bias. Returns the report; a
    transformers model's config records the replacements (see :func:`lowrank_lm.load_structurized`).
    """
    spec = registry.get(kind)
    _check_args(model, spec, init, keep_dense)
    given = _sizing(spec, fraction, rank, num_blocks)
    names = select(model, targets)
    if keep_dense and any(block_index(n) is None for n in names):
        missing = next(n for n in names if block_index(n) is None)
        raise UserError(f"keep_dense={keep_dense} needs a block number in each target's name, and {missing!r} has "
                        "none; narrow targets to the blocks' layers or drop keep_dense")
    kept = [n for n in names if keep_dense and block_index(n) < keep_dense]  # type: ignore[operator]
    plans: list[tuple[str, nn.Module, dict[str, int]]] = []
    solved: dict[tuple[int, int], dict[str, int]] = {}
    for name in (n for n in names if n not in kept):
        module = model.get_submodule(name)
        n_in, n_out = widths(module)
        if fraction is not None and (n_in, n_out) not in solved:
            solved[n_in, n_out] = _solve(spec, fraction, given, n_in, n_out, rank_multiple, name)
        settings = solved[n_in, n_out] if fraction is not None else _checked(spec, dict(given), n_in, n_out, name)
        plans.append((name, module, settings))
    if not plans:
        raise UserError(f"keep_dense={keep_dense} keeps every targeted layer dense; nothing to replace")
    params_before = count_params(model)
    flops_before = linear_flops(model)
    std = _default_std(model) if std is None else std
    replaced, layers = [], []
    for name, module, settings in plans:  # build everything first: a failure leaves the model untouched
        layer, row = _replacement(spec, name, module, settings, init, std)
        replaced.append(row)
        layers.append(layer)
    for (name, _, _), layer in zip(plans, layers, strict=True):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    _record(model, {r.name: {"kind": kind, **r.settings, "source": r.source} for r in replaced})
    return StructurizeReport(kind, init, params_before, count_params(model), flops_before, linear_flops(model),
                             replaced, kept)


@torch.no_grad()
def _replacement(spec: Structure, name: str, module: nn.Module, settings: dict[str, int], init: str,
                 std: float) -> tuple[StructuredLinear, Replaced]:
    w = dense_weight(module)
    n_in, n_out = widths(module)
    layer = build_layer(spec.name, settings, n_in, n_out, module.bias is not None, w)
    error = None
    if init == "fresh":
        layer.reset_parameters(std, spec.default_init)
    else:
        error = _project(layer, w.detach(), name)
    if module.bias is not None:
        layer.bias.copy_(module.bias)
    source = "Linear" if isinstance(module, nn.Linear) else "Conv1D"
    row = Replaced(name, source, n_in, n_out, dict(settings), sum(p.numel() for p in module.parameters()),
                   sum(p.numel() for p in layer.parameters()), module_flops(module, n_in), module_flops(layer, n_in),
                   error)
    return layer, row


def linear_flops(model: nn.Module) -> int:
    """FLOPs per token of every linear layer of the model (dense and structured)."""
    return sum(module_flops(m, m.in_features if isinstance(m, StructuredLinear) else widths(m)[0])
               for m in model.modules() if is_linear(m) or isinstance(m, StructuredLinear))


def _record(model: nn.Module, entries: dict[str, dict]) -> None:
    """Keep the replacements in a transformers config (written by save_pretrained), merged with earlier ones."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        setattr(config, RECORD_KEY, {**(getattr(config, RECORD_KEY, None) or {}), **entries})


def apply_record(model: nn.Module, record: dict[str, dict]) -> None:
    """Rebuild the recorded replacements on a freshly built model (their weights are loaded afterwards)."""
    for name, entry in record.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"the structure record names {name!r}, which this model does not have; the record "
                            "belongs to another architecture") from None
        if not is_linear(module):
            raise UserError(f"the structure record names {name!r}, a {type(module).__name__}, not a linear layer")
        settings = {k: v for k, v in entry.items() if k in registry.SIZE_SETTINGS}
        n_in, n_out = widths(module)
        layer = build_layer(entry["kind"], settings, n_in, n_out, module.bias is not None, dense_weight(module))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    _record(model, record)
