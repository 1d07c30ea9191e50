"""One outcome for every rank: a step that fails on any rank of a multi-process job ends every rank alike.

Without it, a rank that raises (a locked out_dir, a finished run, a missing shard) leaves the others waiting
at the next collective: torchrun's agent tears them down after a few seconds, but a launcher without that
agent (srun, mpirun) leaves them waiting for the process group's timeout (30 minutes by default). With it,
every rank runs the step, the ranks exchange how it went, and all of them leave the same way:

* a :class:`UserError` on any rank ends every rank with that error (exit code 2), printed by rank 0 alone;
* any other exception is re-raised where it happened (its traceback printed there) and ends the other ranks
  with :class:`PeerFailed` (exit code 1, nothing printed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist

from lowrank_lm.errors import PeerFailed, UserError


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched as part of a job, and for a malformed
    launch, which every process reports: see lowrank_lm.train.distributed.setup)."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0
    return rank if 0 <= rank < world else 0


def said_once(error: UserError) -> UserError:
    """Mark an error that every rank raises alike (it follows from the config): only rank 0 prints it."""
    error.echo = launch_rank() == 0
    return error


@contextmanager
def all_or_none() -> Iterator[None]:
    """Run the body on every rank, then agree: if it raised anywhere, it raises everywhere (see above).

    One small all-gather; a no-op outside a process group. Every rank must enter the block, whatever its
    own share of the work (rank 0 may do it all while the others only wait here).
    """
    failure: BaseException | None = None
    try:
        yield
    except BaseException as e:  # every outcome is shared first, then re-raised below
        failure = e
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if failure is not None:
            raise failure
        return
    mine = None if failure is None else (isinstance(failure, UserError), str(failure))
    outcomes: list[tuple[bool, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, mine)
    if failure is not None and not isinstance(failure, UserError):
        raise failure  # a bug or an interrupt: its traceback where it happened
    user = [(rank, o[1]) for rank, o in enumerate(outcomes) if o is not None and o[0]]
    if user:
        rank, message = user[0]
        error = failure if isinstance(failure, UserError) and rank == dist.get_rank() else UserError(
            message + (f" (on rank {rank})" if rank else ""))
        error.echo = dist.get_rank() == 0
        raise error.with_traceback(None) from None
    if any(o is not None for o in outcomes):
        raise PeerFailed("another process of this job failed; its own output says why")
