"""Tensor parallelism for structures: how a low-rank layer's factors shard over a tensor-parallel mesh.

A dense linear layer is split column-wise (its outputs sharded: FFN up/gate, attention q/k/v) or row-wise
(its inputs sharded, partial outputs summed: FFN down, attention out). For a low-rank layer ``y = U (V x)``
the factors shard as torchtitan's LoRA adapters do (facts read from torchtitan's ``components/lora.py``):

- column-parallel base: V replicated, U sharded by output (``Shard(0)`` of U's (out, R)); every rank
  computes the whole bottleneck ``V x`` and its own slice of the outputs; nothing is communicated.
- row-parallel base: V sharded by input (``Shard(1)`` of V's (R, in)), U replicated; each rank's ``V x`` is
  a partial sum over its input slice, ``U`` keeps it partial, and the outputs are summed (one all-reduce,
  of the out-wide result as for the dense layer).

The styles here are torch ``ParallelStyle`` s (``parallelize_module(model, mesh, plan)``), the way torch's
``ColwiseParallel`` / ``RowwiseParallel`` shard ``nn.Linear`` (which they accept alone). Only lowrank
declares a plan; the other kinds are refused in one line.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

from lowrank_lm.errors import UserError
from lowrank_lm.layers.base import StructuredLinear
from lowrank_lm.layers.lowrank import LowRankLinear

COLUMN, ROW = "column", "row"


class LowRankParallel(ParallelStyle):
    """Shard a :class:`LowRankLinear` like a column- or row-parallel dense layer (see the module docstring).

    Returns plain local tensors, as torch's styles do by default, and takes local tensors or DTensors:
    column-parallel reads the whole input and returns this rank's slice of the outputs (last dim);
    row-parallel reads this rank's slice of the inputs and returns the summed outputs (``output_layout``).
    """

    def __init__(self, split: str, output_layout: Placement | None = None) -> None:
        super().__init__()
        if split not in (COLUMN, ROW):
            raise ValueError(f"split must be {COLUMN!r} or {ROW!r}, got {split!r}")
        if output_layout is not None and split == COLUMN:
            raise ValueError("output_layout applies to row-parallel layers (column-parallel outputs are Shard(-1))")
        self.split = split
        self.output_layout = output_layout or Replicate()
        """Row-parallel: where the summed outputs go (Replicate: all-reduce; Shard(1): sequence parallel's
        reduce-scatter, as torchtitan's plan has w2 and wo)."""

    def _placements(self) -> dict[str, Placement]:
        if self.split == COLUMN:  # bias follows the sharded outputs
            return {"v": Replicate(), "u": Shard(0), "bias": Shard(0)}
        return {"v": Shard(1), "u": Replicate(), "bias": Replicate()}

    def _partition(self, name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        placements = self._placements()
        for pname, param in list(module.named_parameters(recurse=False)):
            sharded = distribute_tensor(param.data, mesh, [placements[pname]])
            module.register_parameter(pname, nn.Parameter(sharded, requires_grad=param.requires_grad))

    def _input(self, module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
        x, layout = inputs[0], Replicate() if self.split == COLUMN else Shard(-1)
        if not isinstance(x, DTensor):  # a local tensor is taken as already laid out
            x = DTensor.from_local(x, mesh, [layout], run_check=False)
        elif tuple(x.placements) != (layout,):
            x = x.redistribute(mesh, [layout])
        return (x, *inputs[1:])

    def _output(self, module: nn.Module, y: DTensor, mesh: DeviceMesh):
        if self.split == ROW and isinstance(y.placements[0], Partial):
            y = y.redistribute(mesh, [self.output_layout])  # sum the partial outputs
        return y.to_local()

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if not isinstance(module, LowRankLinear):
            raise UserError(f"LowRankParallel shards lowrank layers; got {type(module).__name__}")
        # input_fn runs as a forward pre-hook and may return new inputs (torch types it as returning None)
        return distribute_module(module, device_mesh, self._partition, self._input, self._output)  # type: ignore[arg-type]


def tensor_parallel_plan(model: nn.Module, splits: dict[str, str],
                         row_output: Placement | None = None) -> dict[str, ParallelStyle]:
    """The plan for ``parallelize_module``: each structure of ``model`` whose name ends in a key of ``splits``
    (e.g. ``{"w1": "column", "w3": "column", "w2": "row"}``) gets that split; row-parallel layers put their
    summed outputs in ``row_output`` (default Replicate; Shard(1) for sequence parallelism).

    Raises a UserError for a structure of a kind without a declared plan (only lowrank has one) and for a
    structure whose name no key of ``splits`` names (its split would be a guess).
    """
    plan: dict[str, ParallelStyle] = {}
    for name, module in model.named_modules():
        if not isinstance(module, StructuredLinear):
            continue
        if not isinstance(module, LowRankLinear):
            raise UserError(f"{name}: tensor parallelism is declared for lowrank layers only, not "
                            f"{type(module).__name__}; use tensor parallel degree 1 (FSDP works with every kind)")
        split = splits.get(name.rpartition(".")[2])
        if split is None:
            raise UserError(f"{name}: no column/row split given for this layer; splits names {sorted(splits)}")
        plan[name] = LowRankParallel(split, row_output if split == ROW else None)
    return plan
