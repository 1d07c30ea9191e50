"""Process-group setup for torchrun (DDP or FSDP2), FSDP2 sharding, and the device to train on."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lowrank_lm.device import resolve_device


@dataclass
class Dist:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def launched(self) -> bool:
        """True in a process group (torchrun), even of one process: DDP / FSDP2 then wrap the model."""
        return dist.is_initialized()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def under_launcher() -> bool:
    """Whether a launcher (torchrun, or srun/mpirun exporting the same variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def setup(device_name: str, option: str = "train.device") -> Dist:
    """Join the process group when started by torchrun (gloo on CPU, NCCL on CUDA), even with one process
    (so that ``torchrun --nproc_per_node 1`` really runs DDP / FSDP2); a plain process stays alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, option)
    if under_launcher() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all processes (identity when not distributed)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_ints(values: list[int], device: torch.device) -> list[int]:
    """Sum a few integers (token counts) over all processes exactly, in int64."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def shard_fsdp(model: torch.nn.Module, precision: str) -> None:
    """FSDP2 in place: each block is one unit (all-gathered for its forward and backward), then the rest.

    With bf16 the parameters are all-gathered and computed in bf16 while the fp32 shards stay the master
    weights, and gradients are reduce-scattered in fp32 (FSDP2's ``MixedPrecisionPolicy``).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision == "bf16" else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
