"""Small file helpers shared by the data modules: hashing and atomic replacement."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """``write_atomic`` of indented JSON."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (for one-line user errors), at most 200 characters."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]
