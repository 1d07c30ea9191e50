"""Outputs follow the user's umask: files 0666 & ~umask, folders 0777 & ~umask.

Plain ``open``/``mkdir`` already do; two things we use do not: ``tempfile.mkdtemp`` (0700, for the
atomic write-then-rename of checkpoints and exports) and safetensors' ``save_file`` (0600). Their
results pass through :func:`follow_umask` before they are renamed into place, so a teammate in the
same group reads a run exactly as ``umask`` says, and the writes stay atomic.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (threads may be writing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> None:
    """Give ``path`` (and, for a folder, everything under it) the mode a plain open/mkdir would have."""
    mask = current_umask()
    root = Path(path)
    todo = [root]
    while todo:
        p = todo.pop()
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
            todo.extend(p.iterdir())
        else:
            os.chmod(p, 0o666 & ~mask)


def make_temp_dir(prefix: str, parent: str | Path) -> Path:
    """A new uniquely named folder under ``parent`` for an atomic write, with the umask's mode (not 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, stat.S_IMODE(0o777 & ~current_umask()))
    return path
