"""Process-group setup for torchrun (DDP or FSDP2), FSDP2 sharding, and the device to train on."""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from lowrank_lm.device import resolve_device
from lowrank_lm.errors import UserError


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


LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What a launcher (torchrun, or srun/mpirun scripts exporting the same) sets for every process of a job."""


def under_launcher() -> bool:
    """Whether a launcher (torchrun, or srun/mpirun exporting the same variables) started this process."""
    return all(v in os.environ for v in LAUNCH_VARIABLES)


def _launch_numbers() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment; a partial or malformed launch is a UserError.

    RANK or WORLD_SIZE without the rest would make each process train alone on its share of the batch
    while believing in a world of several: wrong results that look right.
    """
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        missing = [v for v in LAUNCH_VARIABLES if not os.environ.get(v)]
        if missing:
            present = ", ".join(v for v in LAUNCH_VARIABLES if v not in missing)
            raise UserError(f"a partial distributed launch: {present} set but not {', '.join(missing)}; start "
                            f"with torchrun (or export all of "
                            f"{', '.join(LAUNCH_VARIABLES)}), or unset RANK and WORLD_SIZE to run one process")
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError(f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers, got RANK="
                        f"{os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
                        f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise UserError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of a job "
                        "(0 <= RANK < WORLD_SIZE); fix the launch")
    return rank, world, local_rank


def setup(device_name: str, option: str = "train.device", timeout_minutes: float | None = None) -> Dist:
    """Join the process group when started by torchrun (gloo on CPU, NCCL on CUDA), even with one process
    (so that ``torchrun --nproc_per_node 1`` really runs DDP / FSDP2); a plain process stays alone.

    ``timeout_minutes`` bounds every collective wait (train.dist_timeout_minutes; None: torch's default).
    """
    rank, world, local_rank = _launch_numbers()
    device = resolve_device(device_name, local_rank, option)
    if under_launcher() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = timedelta(minutes=timeout_minutes) if timeout_minutes is not None else None
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)


def broadcast_path(path: Path | None, device: torch.device) -> Path | None:
    """Rank 0's ``path`` on every rank (identity when not distributed); sent as UTF-8 bytes, not a pickle."""
    if not dist.is_initialized():
        return path
    data = b"" if path is None else str(path).encode()
    sent = len(data) + 1 if dist.get_rank() == 0 and path is not None else 0  # 0: no checkpoint
    length = all_reduce_ints([sent], device)[0] - 1
    if length < 0:
        return None
    buf = torch.zeros(length, dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return Path(bytes(buf.cpu().tolist()).decode())


def teardown() -> None:
    """Leave the process group, if this process is in one (safe to call more than once)."""
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
    for block in typing.cast(torch.nn.ModuleList, model.blocks):
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
