"""Inter-process locks on a folder, by ``filelock`` (an OS lock on a lock file: ``flock`` on POSIX).

The operating system drops the lock when its process ends, however it ends, so a lock file left behind by
a crash never blocks the next run: the file stays (it is part of the folder's layout and is listed in the
folder's ownership record), the lock does not. filelock opens the lock file without following a symlink.

Three users: the trainer's ``RUN/.lock`` (one training process per run folder; the sweep probes it to tell
a running run), ``DATA/.prepare.lock`` (one prepare per data dir; a second waits) and the sweep's
``.results.lock`` (one writer of the results table at a time).

This module imports no torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from lowrank_lm.errors import UserError


def try_lock(path: Path) -> FileLock | None:
    """The lock on ``path``, held, or None when another process (or another holder here) has it. A lock file
    that cannot be opened (a symlink planted there, no permission) is a one-line error."""
    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    except OSError as e:
        raise UserError(f"cannot take the lock {path} ({e.strerror or e}); it must be a plain file this user "
                        "can write: remove it, or choose another folder") from None
    return lock


@contextlib.contextmanager
def held(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock on ``path`` for the block, waiting for it when another process has it (``on_wait`` is
    called once before waiting)."""
    lock = try_lock(path)
    if lock is None:
        if on_wait is not None:
            on_wait()
        lock = FileLock(str(path), thread_local=False)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def is_held(path: Path) -> bool:
    """Whether some process holds the lock on ``path`` now (a probe: taken and released at once when free).
    A missing lock file means no holder (the probe then creates nothing)."""
    if path.is_symlink() or not path.is_file():
        return False  # not a lock of ours: whoever planted it, the trainer refuses it in one line
    try:
        lock = try_lock(path)
    except UserError:
        return False
    if lock is None:
        return True
    lock.release()
    return False
