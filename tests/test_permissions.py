"""Checkpoints and exports get the modes the user's umask gives plain files and folders, not 0600/0700."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from lowrank_lm.checkpoint import save_checkpoint
from lowrank_lm.model import Transformer
from lowrank_lm.permissions import current_umask

from .conftest import small_config
from .ecosystem import cli, make_run


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Mode bits of ``root`` and everything under it, by path relative to ``root``."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        found[str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
    return found


def test_current_umask_reads_what_os_umask_set():
    with umask(0o027):
        assert current_umask() == 0o027
    with umask(0o002):
        assert current_umask() == 0o002


@pytest.mark.parametrize("mask,folder,file", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)])
def test_checkpoints_follow_the_umask(tmp_path, mask, folder, file):
    cfg = small_config()
    with umask(mask):
        ckpt = save_checkpoint(tmp_path / "run", 3, Transformer(cfg.model), cfg, {"step": 3})
    found = modes(ckpt)
    assert found.pop(".") == folder
    assert set(found) == {"model.safetensors", "config.yaml", "state.json", "state.safetensors",
                          "meta.json"}
    assert set(found.values()) == {file}


def test_exports_follow_the_umask(tmp_path):
    make_run(tmp_path / "run", [])
    with umask(0o022):
        assert cli("export", str(tmp_path / "run"), str(tmp_path / "hf"))[0] == 0
    found = modes(tmp_path / "hf")
    assert found.pop(".") == 0o755
    assert "model.safetensors" in found and set(found.values()) == {0o644}
