"""Atomic writes: a reader sees the old file or the whole new one, and a planted symlink redirects nothing.

Every file we replace is first written to a temporary file beside it, created exclusively under a unique name
(``tempfile.mkstemp``: ``O_CREAT | O_EXCL``, which never opens an existing path and so never follows a link
someone placed there), synced, and renamed over the target; the folder is then synced, so the rename itself
survives a crash. Temporary names are ``.NAME.XXXXXXXX.tmp`` (:func:`temp_target` recognises them, so a writer
can clear the leftovers of a crashed run of its own files and nothing else). The mode follows the umask, as a
plain ``open`` would (mkstemp alone writes 0600).

This module imports no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lowrank_lm.permissions import current_umask

TEMP_SUFFIX = ".tmp"


def fsync_dir(folder: Path) -> None:
    """Sync a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(fd)


def temp_beside(path: Path, mode: str = "wb") -> tuple[IO[Any], Path]:
    """A new file object open for writing under a unique temporary name beside ``path``, and that name."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        return os.fdopen(fd, mode), Path(name)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise


def commit(f: IO[Any], tmp: Path, path: Path) -> None:
    """Sync and close ``f`` (written to ``tmp``), rename it over ``path`` and sync the folder."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """``with atomic_open(path) as f: f.write(...)``: ``path`` is replaced when the block ends without an
    error; on an error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    f, tmp = temp_beside(path, mode)
    try:
        yield f
        commit(f, tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    with atomic_open(path) as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``write_atomic`` of UTF-8 text."""
    write_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """``write_atomic`` of indented JSON."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def copy_atomic(source: Path, path: Path) -> None:
    """Copy the file ``source`` to ``path`` atomically (the copy is written beside ``path``, then renamed)."""
    with atomic_open(path) as f, open(source, "rb") as src:
        shutil.copyfileobj(src, f)


def temp_target(name: str) -> str | None:
    """The file a temporary file named ``name`` (made by :func:`temp_beside`) was to replace, else None."""
    m = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX), name)
    return m.group(1) if m else None


def open_append(path: str | Path, mode: str = "a") -> IO[Any]:
    """``open(path, mode)`` for appending (``"a"`` or ``"ab"``) that refuses a symlink at ``path`` (ELOOP)
    instead of appending to the file it points at; a new file follows the umask."""
    if mode not in ("a", "ab"):
        raise ValueError(f"open_append takes mode 'a' or 'ab', not {mode!r}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    return os.fdopen(fd, mode)
