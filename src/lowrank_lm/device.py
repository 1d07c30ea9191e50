"""The device a command or a run works on: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` checked against this machine.

It sits at the bottom of the package (it imports only :mod:`lowrank_lm.errors`) so that the API, the
benches and the trainer all take the same check without importing one another.
"""

from __future__ import annotations

import torch

from lowrank_lm.errors import UserError


def resolve_device(name: str | torch.device, local_rank: int = 0, option: str = "train.device") -> torch.device:
    """auto -> cuda:LOCAL_RANK when CUDA is there, else cpu; anything else must exist here.

    ``option`` names the setting in error messages (``train.device`` in configs, ``--device`` on a command line).
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option}={name} but CUDA is not available here; use {option}=cpu")
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise UserError(f"{option}={name}: only {torch.cuda.device_count()} CUDA devices here")
        return torch.device("cuda", index)
    if device.type not in ("cpu", "mps"):
        raise UserError(f"{option}={name} is not supported; use auto, cpu or cuda")
    return device
