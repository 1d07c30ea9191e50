"""Loading never runs code: a payload that would create a file, planted in every file a loader reads.

Each case plants one payload in a copy of a small trained run (step 4 of 20) and runs every reading verb
(eval, generate, export, lm-eval when installed, ``lowrank_lm.load``, train's resume). The marker file never
appears; a verb that reads the planted file ends in one line with exit status 2 (``lowrank_lm.load``: one
UserError), and a verb that does not read it works as before. Pickles go where earlier releases had them
(``state.pt``, ``dcp/.metadata``) and into the files we parse as data (JSON, YAML, safetensors, tokenizer).
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import lowrank_lm
from lowrank_lm.checkpoint import list_checkpoints
from lowrank_lm.errors import UserError
from lowrank_lm.train import run_training

from .conftest import tiny_run_config
from .ecosystem import cli

VERBS = ("eval", "generate", "export", "lm-eval", "load", "train")


class Payload:
    """Unpickling this opens (creates) the marker file: the proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(marker: Path) -> bytes:
    return pickle.dumps({"step": 4, "payload": Payload(marker)})


def yaml_payload(marker: Path) -> str:
    return f"model: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n"


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A run stopped at step 4 (one checkpoint), as `lowrank-lm train --max-steps 4` leaves it."""
    out = tmp_path_factory.mktemp("no-pickle") / "run"
    run_training(tiny_run_config(tiny_data, out, "train.checkpoint_interval=100"), max_steps=4)
    assert [c.name for c in list_checkpoints(out)] == ["step-00000004"]
    return out


def old_sharded_layout(ckpt: Path) -> None:
    """The layout of an earlier release's FSDP checkpoint: DCP's FileSystemWriter shards, pickled .metadata."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    weights = load_file(ckpt / "model.safetensors")
    with pytest.warns(UserWarning):  # one process, no process group
        dcp.save({"model": weights}, checkpoint_id=ckpt / "dcp")
    (ckpt / "model.safetensors").unlink()


@dataclass
class Plant:
    what: str
    plant: Callable[[Path, Path, Path], None]
    """(run folder, its checkpoint, marker) -> None: put the payload in place."""
    read_by: tuple[str, ...]
    """The verbs that read the planted file: they end in one line, exit 2. The others succeed."""
    expect: str
    """A fragment of the one-line message of the verbs in ``read_by``."""


def _write(path: Path, data: bytes | str) -> None:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def _old_metadata(run: Path, ckpt: Path, marker: Path) -> None:
    old_sharded_layout(ckpt)
    _write(ckpt / "dcp" / ".metadata", pickled(marker))


def _old_state(run: Path, ckpt: Path, marker: Path) -> None:
    torch.save({"step": 4, "payload": Payload(marker)}, ckpt / "state.pt")
    for name in ("state.json", "state.safetensors"):
        (ckpt / name).unlink()


def _beside(run: Path, ckpt: Path, marker: Path) -> None:
    """Pickles where earlier releases read them, beside a checkpoint in the current format: never opened."""
    torch.save({"payload": Payload(marker)}, ckpt / "state.pt")
    (ckpt / "dcp").mkdir()
    _write(ckpt / "dcp" / ".metadata", pickled(marker))


ALL = ("eval", "generate", "export", "lm-eval", "load", "train")
PLANTS = [
    Plant("dcp/.metadata of an earlier release", _old_metadata, ALL, "convert-checkpoint"),
    Plant("state.pt of an earlier release", _old_state, ("train",), "convert-checkpoint"),
    Plant("state.pt and dcp/.metadata beside current files", _beside, (), ""),
    Plant("state.json", lambda r, c, m: _write(c / "state.json", pickled(m)), ("train",), "reads whole"),
    Plant("state.safetensors", lambda r, c, m: _write(c / "state.safetensors", pickled(m)), ("train",),
          "reads whole"),
    Plant("meta.json", lambda r, c, m: _write(c / "meta.json", pickled(m)), ("train",), "reads whole"),
    Plant("model.safetensors", lambda r, c, m: _write(c / "model.safetensors", pickled(m)), ALL, "cannot be read"),
    Plant("the checkpoint's config.yaml", lambda r, c, m: _write(c / "config.yaml", yaml_payload(m)), ALL,
          "YAML"),
    Plant("the run's config.yaml", lambda r, c, m: _write(r / "config.yaml", yaml_payload(m)), ("train",), "YAML"),
    Plant("the run's tokenizer.json", lambda r, c, m: _write(r / "tokenizer.json", pickled(m)),
          ("generate", "export", "load", "lm-eval"), "tokenizer"),
]


def run_verb(verb: str, run: Path, tmp: Path) -> tuple[int, str]:
    """Exit status and stderr of one reading verb on ``run`` (``load``: 2 and the UserError's message)."""
    if verb == "load":
        try:
            lowrank_lm.load(run)
        except UserError as e:
            return 2, f"{e}\n"
        return 0, ""
    argv = {
        "eval": ["eval", str(run), "--device", "cpu", "--tokens", "256"],
        "generate": ["generate", str(run), "--prompt", "The", "--max-new-tokens", "2", "--temperature", "0",
                     "--device", "cpu"],
        "export": ["export", str(run), str(tmp / "hf")],
        "lm-eval": ["lm-eval", str(run), "--include-path", "examples/lm-eval", "--no-builtin-tasks", "--tasks",
                    "lowrank_lm_tiny_cloze", "--limit", "2", "--device", "cpu", "--output", str(tmp / "lm.json")],
        "train": ["train", str(run), "--max-steps", "5"],
    }[verb]
    code, _, err = cli(*argv)
    return code, err


def _has_lm_eval() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("plant", PLANTS, ids=[p.what for p in PLANTS])
def test_a_planted_payload_never_runs(trained, tmp_path, plant):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(trained, run)
    plant.plant(run, list_checkpoints(run)[-1], marker)
    for verb in VERBS:
        if verb == "lm-eval" and (verb not in plant.read_by or not _has_lm_eval()):
            continue  # lm-eval's own run is slow: only where it must refuse before it starts
        scratch = tmp_path / verb
        scratch.mkdir()
        code, err = run_verb(verb, run, scratch)
        assert not marker.exists(), (verb, "the payload ran")
        if verb in plant.read_by:
            assert code == 2, (verb, code, err)
            assert err.count("\n") == 1 and plant.expect in err, (verb, err)
        else:
            assert code in (0, 75), (verb, code, err)  # 75: train --max-steps stopped, resumable


def test_planted_records_are_refused_in_one_line(trained, tmp_path):
    """Exports, results tables and run summaries are JSON or CSV: a pickle there is a malformed file."""
    marker = tmp_path / "pwned"
    assert cli("export", str(trained), str(tmp_path / "hf"))[0] == 0
    _write(tmp_path / "hf" / "lowrank_lm_export.json", pickled(marker))  # export's record of what it wrote
    _write(tmp_path / "results.csv", pickled(marker))
    (tmp_path / "runs" / "a").mkdir(parents=True)
    _write(tmp_path / "runs" / "a" / "summary.json", pickled(marker))
    for argv, expect in ((["export", str(trained), str(tmp_path / "hf"), "--overwrite"], "is not a record of"),
                         (["fit", str(tmp_path / "results.csv")], "not a UTF-8 text CSV"),
                         (["compare", str(tmp_path / "runs")], "cannot read")):
        code, _, err = cli(*argv)
        assert code == 2 and err.count("\n") == 1 and expect in err, (argv, err)
        assert not marker.exists()
