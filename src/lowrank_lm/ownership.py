"""Ours or refused: a command writes into a folder only when the folder is new, empty or already its own, and
replaces or deletes only the files it wrote there.

Each writer keeps a record in the folder it writes, a JSON object whose ``files`` list names the entries
(files or folders, directly in the folder) it wrote; other keys of the record belong to the writer (an
export's record also holds its provenance). A name is added to the record *before* the file is written, so
a crash in between leaves nothing unaccounted for. The checks:

* :meth:`Ownership.check`: a folder that exists, is not empty and holds no record of this writer is refused
  in one line that names the folder and the fix (a folder written by an older version, which kept no
  record, is recognised by ``legacy``);
* :meth:`Ownership.claim`: an entry of a name the writer is about to write that exists but is not in the
  record (someone else's file) is refused;
* :meth:`Ownership.remove`: deletes only entries the record lists (a symlink is removed, never followed).

This module imports no torch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowrank_lm.atomic import fsync_dir, write_json_atomic
from lowrank_lm.errors import UserError


def plain_name(name: object) -> bool:
    """Whether ``name`` is one entry directly in a folder (no separator, not ``.``/``..``)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and os.sep not in name


@dataclass(frozen=True)
class Ownership:
    """The entries one writer (``what``, e.g. "a training run") owns in ``folder``, by its record."""

    folder: Path
    record: str
    what: str
    legacy: Callable[[Path], set[str] | None] | None = None
    """For folders written before records existed: the entries such a folder's writer wrote, or None when
    ``folder`` is not one of them."""

    @property
    def record_path(self) -> Path:
        """Where the record of what this writer wrote lies in the folder."""
        return self.folder / self.record

    def read_record(self) -> dict[str, Any] | None:
        """The record as written (None when there is none); an unreadable one is a one-line error."""
        path = self.record_path
        if not os.path.lexists(path):
            return None
        try:
            if path.is_symlink():
                raise ValueError("a symlink")
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is not a record of {self.what} ({e}); move {self.folder} away or choose "
                            "another folder") from None
        return data

    def owned(self, default: Iterable[str] = ()) -> set[str] | None:
        """The entries this writer wrote in the folder, its record included; None when it never wrote there.
        ``default``: what a record without a ``files`` list (an older version's) stands for."""
        data = self.read_record()
        if data is None:
            found = self.legacy(self.folder) if self.legacy is not None and self.folder.is_dir() else None
            return None if found is None else {n for n in found if plain_name(n)}
        files = data.get("files", list(default))
        if not isinstance(files, list):
            files = []
        return {n for n in files if plain_name(n)} | {self.record}

    def check(self, fix: str, staging: str | None = None) -> set[str]:
        """What the writer may replace in the folder: nothing in a new or empty one (``staging``, the writer's
        own folder of new files, aside), its own entries in a folder it wrote; any other folder is refused
        (``fix`` says what to do instead)."""
        if os.path.lexists(self.folder) and not self.folder.is_dir():
            raise UserError(f"{self.folder} is a file, not a folder; {fix}")
        owned = self.owned()
        if owned is not None:
            return owned
        if not self.folder.is_dir() or all(p.name == staging for p in self.folder.iterdir()):
            return set()
        raise UserError(f"{self.folder} is not empty and was not written by {self.what} (no {self.record}); {fix}")

    def check_names(self, names: Iterable[str], fix: str, staging: str | None = None) -> set[str]:
        """:meth:`check`, and refuse when one of ``names`` exists in the folder and is not the writer's; writes
        nothing (for a check before long work)."""
        owned = self.check(fix, staging)
        bad = sorted(n for n in names if not plain_name(n))
        if bad:
            raise ValueError(f"not a plain file name: {bad[0]!r}")
        foreign = sorted(n for n in names if n not in owned and os.path.lexists(self.folder / n))
        if foreign:
            raise UserError(f"{self.folder / foreign[0]} was not written by {self.what}, which would replace it; "
                            f"{fix}")
        return owned

    def claim(self, names: Iterable[str], fix: str, staging: str | None = None) -> set[str]:
        """Record ``names`` as this writer's before it writes them (creating the folder); refuses when one of
        them exists and is not the writer's. Other keys of an existing record are kept."""
        names = set(names)
        owned = self.check_names(names, fix, staging)
        data = self.read_record() or {}
        if names <= owned and data:
            return owned
        self.folder.mkdir(parents=True, exist_ok=True)
        data["files"] = sorted((owned | names) - {self.record})
        write_json_atomic(self.record_path, data)
        return owned | names | {self.record}

    def remove(self, names: Iterable[str]) -> None:
        """Delete those of ``names`` that this writer wrote (a folder with all it holds); others stay."""
        owned = self.owned() or set()
        for name in sorted(set(names) & owned):
            path = self.folder / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)

    def move_in(self, staging: Path, fix: str) -> list[Path]:
        """Claim the entries of the folder ``staging`` (written beside, e.g. by :func:`make_temp_dir`) and
        rename each into the folder in place of an earlier one of ours; returns their new paths."""
        names = sorted(p.name for p in staging.iterdir())
        self.claim(names, fix, staging.name)
        for name in names:
            target = self.folder / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(staging / name, target)
        fsync_dir(self.folder)
        staging.rmdir()
        return [self.folder / n for n in names]
