"""A torchtitan model converter: train registry structures inside torchtitan's trainer (optional extra
``torchtitan``, written for and tested with torchtitan 0.2.2).

Enable it with three job-config keys (see docs/integrations.md)::

    --experimental.custom_import lowrank_lm.integrations.torchtitan      # registers converter "lowrank_lm"
    --job.custom_config_module lowrank_lm.integrations.torchtitan        # adds the [lowrank_lm] section
    --model.converters lowrank_lm --lowrank_lm.kind lowrank --lowrank_lm.fraction 0.5

torchtitan builds the model on the meta device, applies its converters, counts parameters and FLOPs, then
parallelizes, materializes and calls ``model.init_weights()``. The converter (:func:`convert_model`) uses
:func:`lowrank_lm.structurize` (``init="fresh"``, shapes only on meta) to swap the targeted ``nn.Linear``
layers (by default the FFN's w1/w2/w3; ``targets`` may add ``attention``: wq/wk/wv/wo), then

- makes the replaced layers' parents initialise their structures: torchtitan's ``init_weights`` of a
  FeedForward / Attention reads ``w1.weight``, which a structure has not; the parent's own init runs on a
  dense stand-in per structure, and the structure is initialised with the std of the weight that init drew
  (torchtitan's depth-scaled std for w2/w3/wo, 0.02 for w1/wq/wk/wv), so the rules stay torchtitan's;
- replaces ``model_args.get_nparams_and_flops`` (which the trainer calls right after the converters, for
  its MFU and TFLOPS) by :func:`nparams_and_flops`: the linear layers' FLOPs counted on the real modules
  with FlopCounterMode instead of torchtitan's ``6 x (parameters - embeddings)``, which assumes every weight
  is used in one multiply-add per token (on the debug model every registry kind meets that, and the two
  differ by the norm weights only: docs/integrations.md; a structure that did not would be counted right).

Tensor parallelism: torchtitan 0.2.2's ``parallelize_llama`` shards ``feed_forward.w1`` etc. with torch's
``ColwiseParallel`` / ``RowwiseParallel``, which accept ``nn.Linear`` only. Importing this module also registers
the train spec ``lowrank_lm_llama3`` (``--model.name lowrank_lm_llama3``): torchtitan's llama3 spec whose
parallelize function (:func:`parallelize_structured_llama`) applies :func:`apply_tp_with_structures` (torchtitan's
own ``apply_tp`` with the lowrank factors sharded as its LoRA adapters shard, see
:mod:`lowrank_lm.integrations.tensor_parallel`) and then ``parallelize_llama`` for the rest. With another model
name the converter refuses a tensor-parallel degree > 1 in one line. FSDP needs nothing.
"""

# No ``from __future__ import annotations``: torchtitan merges JobConfig into its own dataclass and tyro
# resolves the field types there, where these names would not resolve as strings.
import importlib.util
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from lowrank_lm.anymodel import StructurizeReport, linear_flops, structurize
from lowrank_lm.anymodel.targets import select
from lowrank_lm.errors import UserError
from lowrank_lm.integrations.tensor_parallel import COLUMN, ROW
from lowrank_lm.integrations.tensor_parallel import tensor_parallel_plan as factor_plan
from lowrank_lm.layers import registry
from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.layers.lowrank import SPEC as LOWRANK

TESTED_VERSION = "0.2.2"
NAME = "lowrank_lm"
"""The converter's name in ``model.converters``."""
TRAIN_SPEC = "lowrank_lm_llama3"
"""torchtitan's llama3 train spec with tensor parallelism for structures (``--model.name``)."""
INSTALL = "pip install 'lowrank-lm[torchtitan]' (torchtitan==0.2.2 and triton, which its import needs)"
LLAMA_SPLITS = {"w1": COLUMN, "w3": COLUMN, "w2": ROW, "wq": COLUMN, "wk": COLUMN, "wv": COLUMN, "wo": ROW}
"""How torchtitan's Llama plan splits each linear layer (for :func:`tensor_parallel_plan`)."""


@dataclass
class StructureSettings:
    """The ``[lowrank_lm]`` section of a torchtitan job config: :func:`lowrank_lm.structurize`'s arguments."""

    kind: str = LOWRANK.name  # the one kind with a tensor-parallel plan
    fraction: float | None = None
    """Each layer's weights as a share of the dense layer's (give this or rank / num_blocks)."""
    rank: int | None = None
    num_blocks: int | None = None
    targets: list[str] = field(default_factory=lambda: ["ffn"])
    """Presets (ffn: feed_forward.w1-w3; attention: attention.wq-wo) or module-name patterns."""
    keep_dense: int = 0
    """Leave the layers of blocks 0..k-1 dense."""
    rank_multiple: int = 8


@dataclass
class JobConfig:
    """torchtitan's job config extension (``--job.custom_config_module lowrank_lm.integrations.torchtitan``)."""

    lowrank_lm: StructureSettings = field(default_factory=StructureSettings)


def nparams_and_flops(model: nn.Module, model_args: Any, seq_len: int) -> tuple[int, int]:
    """(parameters, training FLOPs per token) of a torchtitan Llama-family model, structures counted as built.

    FLOPs per token = 3 x (forward FLOPs of every linear layer, the head included, counted on one token with
    FlopCounterMode: forward + the two backward matmuls) + torchtitan's attention term
    ``6 n_layers n_heads head_dims seq_len`` (scores and values, head_dims = 2 dim / n_heads).
    """
    nparams = sum(p.numel() for p in model.parameters())
    head_dims = 2 * (model_args.dim // model_args.n_heads)
    attention = 6 * model_args.n_layers * model_args.n_heads * head_dims * seq_len
    return nparams, 3 * linear_flops(model) + attention


class _CountsFor:
    """``model_args.get_nparams_and_flops`` bound to :func:`nparams_and_flops` (the trainer's call signature)."""

    def __init__(self, model_args: Any) -> None:
        self.model_args = model_args

    def __call__(self, model: nn.Module, seq_len: int) -> tuple[int, int]:
        return nparams_and_flops(model, self.model_args, seq_len)


class _InitWithStructures:
    """A parent's ``init_weights`` that also initialises its structures (see the module docstring)."""

    def __init__(self, parent: nn.Module, original: Any, names: list[str], init: str) -> None:
        self.parent, self.original, self.names, self.init = parent, original, names, init

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structures = {n: getattr(self.parent, n) for n in self.names}
        stand_ins = {n: _stand_in(s) for n, s in structures.items()}
        try:
            for n, dense in stand_ins.items():
                setattr(self.parent, n, dense)
            result = self.original(*args, **kwargs)
        finally:
            for n, s in structures.items():
                setattr(self.parent, n, s)
        with torch.no_grad():
            for n, s in structures.items():
                _reset(s, float(stand_ins[n].weight.float().std()), self.init)
                if s.bias is not None:
                    s.bias.copy_(_like(s.bias, stand_ins[n].bias))
        return result


def _like(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``param``: distributed from rank 0 when ``param`` is a DTensor (FSDP / TP)."""
    if isinstance(param, DTensor):
        return distribute_tensor(full, param.device_mesh, param.placements)
    return full


def _reset(layer: StructuredLinear, std: float, init: str) -> None:
    """``layer.reset_parameters(std, init)``, also when its parameters are DTensors: the structure's init
    (e.g. lowrank's SVD of a Gaussian) runs on full plain tensors, which rank 0's values then fill."""
    params = dict(layer.named_parameters(recurse=False))
    if not any(isinstance(p, DTensor) for p in params.values()):
        layer.reset_parameters(std, init)
        return
    for name, p in params.items():
        layer._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=p.device))
    try:
        layer.reset_parameters(std, init)
        full = {name: layer._parameters[name] for name in params}  # each set just above, never None
    finally:
        for name, p in params.items():
            layer._parameters[name] = p
    for name, p in params.items():
        p.copy_(_like(p, full[name].data))  # type: ignore[union-attr]


def _stand_in(layer: StructuredLinear) -> nn.Linear:
    """An uninitialised dense layer of ``layer``'s shape, device and dtype (the parent's init fills it)."""
    p = next(layer.parameters())
    with torch.device("meta"):
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=p.dtype)
    return dense.to_empty(device=p.device)


def convert_model(model: nn.Module, settings: StructureSettings) -> StructurizeReport:
    """Structurize a torchtitan model in place (meta device or not) and make torchtitan's init and counts
    see the structures; returns structurize's report. A UserError leaves the model as it was."""
    parents = {name.rpartition(".")[0] for name in select(model, settings.targets)}
    missing = sorted(p for p in parents if not callable(getattr(model.get_submodule(p), "init_weights", None)))
    if missing:
        raise UserError(f"{missing[0]} holds a target layer but has no init_weights, so torchtitan could not "
                        "initialise its structure; target the layers of FeedForward / Attention modules")
    report = structurize(model, settings.kind, fraction=settings.fraction, rank=settings.rank,
                         num_blocks=settings.num_blocks, targets=settings.targets, keep_dense=settings.keep_dense,
                         init="fresh", rank_multiple=settings.rank_multiple)
    by_parent: dict[str, list[str]] = {}
    for row in report.replaced:
        parent_name, _, child = row.name.rpartition(".")
        by_parent.setdefault(parent_name, []).append(child)
    default_init = registry.get(settings.kind).default_init
    for parent_name, children in by_parent.items():
        parent = model.get_submodule(parent_name)
        # an instance attribute: this module's init_weights, not its class's (other instances stay as they are)
        object.__setattr__(parent, "init_weights", _InitWithStructures(parent, parent.init_weights, children,
                                                                        default_init))
    model_args = getattr(model, "model_args", None)
    if model_args is not None and hasattr(model_args, "get_nparams_and_flops"):
        model_args.get_nparams_and_flops = _CountsFor(model_args)
    return report


def tensor_parallel_plan(model: nn.Module, sequence_parallel: bool = False) -> dict[str, ParallelStyle]:
    """The ``parallelize_module`` plan of a converted torchtitan Llama model's lowrank layers (w1/w3/wq/wk/wv
    column-parallel, w2/wo row-parallel, their outputs reduce-scattered over the sequence with
    ``sequence_parallel`` as torchtitan's plan has them); dense layers are not in it."""
    return factor_plan(model, LLAMA_SPLITS, Shard(1) if sequence_parallel else None)


def apply_tp_with_structures(model: nn.Module, tp_mesh: DeviceMesh, loss_parallel: bool = False,
                             enable_float8_tensorwise_tp: bool = False, cp_enabled: bool = False) -> None:
    """torchtitan's Llama tensor parallelism on a converted model: its own ``apply_tp`` (embeddings, sequence-
    parallel norms, attention and FFN, head) runs with a dense stand-in in each structure's place, then each
    structure goes back and is sharded as its dense layer was (:func:`tensor_parallel_plan`, sequence-parallel).
    For a parallelize function of one's own, in place of ``apply_tp``; lowrank layers only (UserError else)."""
    from torchtitan.models.llama3.infra.parallelize import apply_tp

    plan = tensor_parallel_plan(model, sequence_parallel=True)
    structures = {name: layer for name, layer in model.named_modules()
                  if name in plan and isinstance(layer, StructuredLinear)}
    try:
        for name, layer in structures.items():
            _put(model, name, _stand_in(layer))  # meta in torchtitan's trainer: no memory
        apply_tp(model, tp_mesh, loss_parallel=loss_parallel, enable_float8_tensorwise_tp=enable_float8_tensorwise_tp,
                 cp_enabled=cp_enabled)
    finally:
        for name, layer in structures.items():
            _put(model, name, layer)
    parallelize_module(model, tp_mesh, plan)


class _TensorParallelDone:
    """``parallel_dims`` as ``parallelize_llama`` reads it once tensor parallelism is applied: tp_enabled False,
    everything else (meshes, FSDP / DDP / CP / PP flags) the real one's."""

    tp_enabled = False

    def __init__(self, dims: Any) -> None:
        self._dims = dims

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dims, name)


def parallelize_structured_llama(model: nn.Module, parallel_dims: Any, job_config: Any) -> nn.Module:
    """The parallelize function of the ``lowrank_lm_llama3`` train spec: tensor parallelism by
    :func:`apply_tp_with_structures` (with the arguments torchtitan's ``parallelize_llama`` gives ``apply_tp``),
    then ``parallelize_llama`` itself for the rest (activation checkpointing, compile, FSDP / DDP, context
    parallelism), told that tensor parallelism is done."""
    from torchtitan.distributed.tensor_parallel import maybe_enable_async_tp
    from torchtitan.models.llama3.infra.parallelize import parallelize_llama

    if parallel_dims.tp_enabled:
        if "float8" in job_config.model.converters:
            raise UserError("float8 with tensor parallelism and structures is not supported; drop one of them")
        tp_mesh = parallel_dims.get_mesh("tp")
        apply_tp_with_structures(model, tp_mesh, loss_parallel=not job_config.parallelism.disable_loss_parallel,
                                 cp_enabled=parallel_dims.cp_enabled)
        maybe_enable_async_tp(job_config, tp_mesh)
    return parallelize_llama(model, _TensorParallelDone(parallel_dims), job_config)


def _put(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, layer)


def _settings_of(job_config: Any) -> StructureSettings:
    settings = getattr(job_config, NAME, None)
    if settings is None:
        raise UserError(f"the job config has no [{NAME}] section; add --job.custom_config_module "
                        "lowrank_lm.integrations.torchtitan and set --lowrank_lm.kind / --lowrank_lm.fraction")
    return StructureSettings(**{k: getattr(settings, k) for k in StructureSettings.__dataclass_fields__})


class StructureConverter:
    """torchtitan's ``ModelConverter``: ``model.converters = ["lowrank_lm"]``."""

    def __init__(self, job_config: Any, parallel_dims: Any) -> None:
        self.settings = _settings_of(job_config)
        if getattr(parallel_dims, "tp_enabled", False) and job_config.model.name != TRAIN_SPEC:
            raise UserError(f"tensor parallelism with structures needs --model.name {TRAIN_SPEC} (torchtitan's "
                            f"{job_config.model.name} plan shards nn.Linear layers only), or tensor_parallel_degree=1")
        self.report: StructurizeReport | None = None

    def convert(self, model: nn.Module) -> None:
        """Swap the targeted layers (torchtitan calls this on the meta-device model) and log the report."""
        self.report = convert_model(model, self.settings)
        from torchtitan.tools.logging import logger

        logger.info("lowrank_lm converter:\n%s", self.report.summary())

    def post_optimizer_hook(self, model: nn.Module | list[nn.Module]) -> None:
        """Nothing to do after an optimizer step: structures keep no statistics."""


_registered = False


def register() -> None:
    """Register :class:`StructureConverter` with torchtitan as ``"lowrank_lm"`` (once); a UserError when
    torchtitan cannot be imported or is not the tested version (its converter protocol changed in 0.3)."""
    global _registered
    if _registered:
        return
    try:
        from torchtitan.protocols.model_converter import register_model_converter
    except ImportError as e:
        raise UserError(f"torchtitan could not be imported ({e}); {INSTALL}") from None
    version = metadata.version("torchtitan")
    if version != TESTED_VERSION:
        raise UserError(f"torchtitan {version} is installed; this converter is written for {TESTED_VERSION}'s "
                        f"ModelConverter protocol: {INSTALL}")
    register_model_converter(StructureConverter, NAME)
    _register_train_spec()
    _registered = True


def _register_train_spec() -> None:
    """``lowrank_lm_llama3``: torchtitan's llama3 train spec with :func:`parallelize_structured_llama`."""
    import dataclasses

    from torchtitan.protocols.train_spec import get_train_spec, register_train_spec

    register_train_spec(TRAIN_SPEC, dataclasses.replace(get_train_spec("llama3"),
                                                        parallelize_fn=parallelize_structured_llama))


# ``--experimental.custom_import lowrank_lm.integrations.torchtitan`` imports this module: registering here is
# what makes "lowrank_lm" a converter name. Without torchtitan the module still imports (for JobConfig).
if importlib.util.find_spec("torchtitan") is not None:
    register()
