"""What lives where in a run's checkpoints: folder and file names, and which format a folder holds.

Both writers (the single-file one, :mod:`lowrank_lm.checkpoint.single`, and the sharded one,
:mod:`lowrank_lm.checkpoint.sharded`) and every reader take their names from here::

    RUN/checkpoints/step-00000100/      one complete checkpoint (CHECKPOINTS / checkpoint_name(step))
        model.safetensors               model weights (MODEL_FILE), or
        dcp/*.safetensors               the shards of an FSDP run (DCP_DIR), optimiser tensors included
        config.yaml                     the config the weights belong to (CONFIG_FILE)
        state.json, state.safetensors   training state (see lowrank_lm.safe_state)
        meta.json                       step, tokens (META_FILE), written last: it marks the folder complete

Checkpoints of earlier releases kept a pickled ``state.pt`` or ``dcp/.metadata``; they are recognised here
and refused with the command that converts them.
"""

from __future__ import annotations

from pathlib import Path

from lowrank_lm.errors import UserError
from lowrank_lm.safe_state import has_state

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
DCP_DIR = "dcp"
OLD_STATE = "state.pt"
"""The pickled training state of earlier releases: never read here (``convert-checkpoint`` reads it)."""
OLD_METADATA = ".metadata"
"""The pickled metadata file of DCP's FileSystemWriter (the format of earlier releases): never read here."""


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of ``step``: ``step-`` and eight digits, so names sort by step."""
    return f"{PREFIX}{step:08d}"


def temp_prefix(final: Path) -> str:
    """The name prefix of the temporary sibling a checkpoint is written into before its rename."""
    return f".tmp-{final.name}-"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def shard_files(ckpt: str | Path) -> list[Path]:
    """The safetensors shards of a sharded checkpoint (empty for an unsharded one)."""
    folder = Path(ckpt) / DCP_DIR
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def is_sharded(ckpt: str | Path) -> bool:
    """Whether a checkpoint folder holds safetensors shards of an FSDP run rather than ``model.safetensors``."""
    return bool(shard_files(ckpt))


def is_old_sharded(ckpt: str | Path) -> bool:
    """Whether a checkpoint folder holds an earlier release's DCP shards (pickled ``.metadata``), which we refuse.

    Only when the folder has no weights in the current format: a ``.metadata`` beside them is never read."""
    ckpt = Path(ckpt)
    return ((ckpt / DCP_DIR / OLD_METADATA).is_file() and not is_sharded(ckpt)
            and not (ckpt / MODEL_FILE).is_file())


def old_format(ckpt: str | Path) -> str | None:
    """What makes ``ckpt`` a checkpoint of an earlier release (a pickle we will not read), or None."""
    ckpt = Path(ckpt)
    if is_old_sharded(ckpt):
        return "its sharded weights are indexed by a pickled dcp/.metadata"
    if (ckpt / OLD_STATE).is_file() and not has_state(ckpt):
        return f"its training state is a pickle ({OLD_STATE})"
    return None


def refuse_old_format(ckpt: str | Path) -> None:
    """A one-line :class:`UserError` for a checkpoint in the pickled format of earlier releases."""
    why = old_format(ckpt)
    if why is not None:
        raise UserError(f"{ckpt} is a checkpoint of an earlier lowrank-lm: {why}, which can run code when read, "
                        f"so it is not loaded; if you trust where it came from, convert it once with "
                        f"`lowrank-lm convert-checkpoint {ckpt} NEW_FOLDER` and use NEW_FOLDER")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint path or a run directory (its newest checkpoint)."""
    path = Path(path)
    if (path / META_FILE).is_file():
        if (path / MODEL_FILE).is_file() or is_sharded(path):
            return path
        refuse_old_format(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a run directory or a checkpoint folder")
    found = list_checkpoints(path)
    if not found:
        raise UserError(f"{path} holds no complete checkpoint; give a run directory that has "
                        f"{CHECKPOINTS}/{PREFIX}*/{META_FILE}, or train first")
    return found[-1]
