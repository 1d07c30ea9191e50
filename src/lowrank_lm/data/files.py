"""Small file helpers shared by the data modules: hashing, one-line errors (atomic writes: lowrank_lm.atomic)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lowrank_lm.atomic import write_atomic, write_json_atomic

__all__ = ["file_sha256", "first_line", "write_atomic", "write_json_atomic"]


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            h.update(block)
    return h.hexdigest()


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (for one-line user errors), at most 200 characters."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]
