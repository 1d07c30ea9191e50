"""Where a result came from: package and torch versions, the git commit, the command line, the data.

Recorded in a run's ``summary.json`` and, as comments, at the top of its ``config.yaml``, so a number can be
traced to the code and data that produced it. Collecting it never fails a run: what cannot be found is None.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lowrank_lm.version import __version__

MANIFEST_FILE = "manifest.json"  # the data dir's manifest (lowrank_lm.data.manifest.MANIFEST)


@dataclass(frozen=True)
class Provenance:
    """The code, environment and data behind a run."""

    package_version: str
    """lowrank-lm's version."""
    torch_version: str | None
    git_commit: str | None
    """The commit of the source tree the package was imported from; None outside a git work tree."""
    git_dirty: bool | None
    """True when tracked files differed from that commit (the numbers may not be reproducible from it)."""
    command: list[str]
    """The command line of the process (``sys.argv``)."""
    data_manifest_sha256: str | None
    """sha256 of the data dir's manifest.json, which pins the tokenizer files and every shard's sha256."""

    def to_dict(self) -> dict[str, Any]:
        """The provenance as plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        """Read a recorded provenance; keys it does not know (from a newer version) are ignored."""
        return cls(package_version=str(d.get("package_version")), torch_version=d.get("torch_version"),
                   git_commit=d.get("git_commit"), git_dirty=d.get("git_dirty"),
                   command=list(d.get("command") or []), data_manifest_sha256=d.get("data_manifest_sha256"))

    def comment_lines(self) -> list[str]:
        """The provenance as YAML comment lines (for the top of a saved config)."""
        commit = "not a git checkout" if self.git_commit is None else (
            self.git_commit + (" (with uncommitted changes)" if self.git_dirty else ""))
        return [f"# written by lowrank-lm {self.package_version}, torch {self.torch_version}, git {commit}",
                f"# command: {shlex.join(self.command)}",
                f"# data manifest sha256: {self.data_manifest_sha256}"]


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree holding ``folder``; (None, None) when there is none."""
    commit = _git(["rev-parse", "HEAD"], folder)
    if not commit:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"], folder)
    return commit, (bool(status) if status is not None else None)


def manifest_sha256(data_dir: str | Path | None) -> str | None:
    """sha256 of ``data_dir``/manifest.json, or None when there is no such file."""
    if data_dir is None:
        return None
    try:
        return hashlib.sha256((Path(data_dir) / MANIFEST_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


def collect_provenance(data_dir: str | Path | None = None) -> Provenance:
    """The provenance of this process, for a run on the data in ``data_dir``."""
    torch = sys.modules.get("torch")  # only read when already imported: provenance never imports torch itself
    commit, dirty = git_state(Path(__file__).resolve().parent)
    return Provenance(package_version=__version__, torch_version=str(torch.__version__) if torch is not None else None,
                      git_commit=commit, git_dirty=dirty, command=list(sys.argv),
                      data_manifest_sha256=manifest_sha256(data_dir))
