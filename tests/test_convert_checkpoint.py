"""`lowrank-lm convert-checkpoint`: an earlier release's checkpoint (pickled state.pt, DCP shards with a
pickled .metadata), converted once, resumes exactly as the checkpoint it was made from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lowrank_lm.checkpoint import list_checkpoints, load_state, optimizer_state_by_name
from lowrank_lm.model import Transformer
from lowrank_lm.reliability import final_state
from lowrank_lm.resolve import load_config
from lowrank_lm.train import run_training

from .conftest import tiny_run_config
from .ecosystem import cli


@pytest.fixture(scope="module")
def current(tiny_data, tmp_path_factory) -> Path:
    """A current-format checkpoint of step 4."""
    out = tmp_path_factory.mktemp("convert") / "run"
    run_training(tiny_run_config(tiny_data, out, "train.checkpoint_interval=100"), max_steps=4)
    return list_checkpoints(out)[-1]


def old_unsharded(ckpt: Path, dest: Path) -> Path:
    """``ckpt`` as an earlier release wrote it: model.safetensors, the training state in a pickled state.pt."""
    shutil.copytree(ckpt, dest)
    torch.save(load_state(ckpt), dest / "state.pt")
    for name in ("state.json", "state.safetensors"):
        (dest / name).unlink()
    return dest


def old_sharded(ckpt: Path, dest: Path) -> Path:
    """``ckpt`` as an earlier FSDP run wrote it: DCP FileSystemWriter shards of {"model", "optimizer"} (by
    parameter name) indexed by a pickled dcp/.metadata, and state.pt without the optimiser."""
    import torch.distributed.checkpoint as dcp

    old_unsharded(ckpt, dest)
    state = torch.load(dest / "state.pt", weights_only=True)
    model = Transformer(load_config(ckpt / "config.yaml").model)
    shards = {"model": load_file(ckpt / "model.safetensors"),
              "optimizer": optimizer_state_by_name(model, state.pop("optimizer"))}
    with pytest.warns(UserWarning):  # one process without a process group
        dcp.save(shards, checkpoint_id=dest / "dcp")
    torch.save(state, dest / "state.pt")
    (dest / "model.safetensors").unlink()
    meta = json.loads((dest / "meta.json").read_text())
    (dest / "meta.json").write_text(json.dumps({**meta, "format": "dcp"}))
    assert (dest / "dcp" / ".metadata").is_file()
    return dest


def resume(tiny_data, ckpt: Path, out: Path) -> dict[str, torch.Tensor]:
    """Resume ``ckpt`` for two steps into ``out``; the weights and optimiser tensors of step 6."""
    run_training(tiny_run_config(tiny_data, out, f"train.resume={ckpt}", "train.checkpoint_interval=100"),
                 max_steps=6)
    ckpt6 = list_checkpoints(out)[-1]
    assert ckpt6.name == "step-00000006"
    model = Transformer(load_config(ckpt6 / "config.yaml").model)
    by_name = optimizer_state_by_name(model, load_state(ckpt6)["optimizer"])["state"]
    return {**{f"model.{k}": v for k, v in final_state(ckpt6)["model"].items()},
            **{f"optimizer.{n}.{k}": v for n, entries in by_name.items() for k, v in entries.items()}}


@pytest.mark.parametrize("layout", [old_unsharded, old_sharded], ids=["state.pt", "dcp-metadata"])
def test_a_converted_checkpoint_resumes_exactly_as_the_original(current, tiny_data, tmp_path, layout):
    old = layout(current, tmp_path / "old")
    code, out, err = cli("convert-checkpoint", str(old), str(tmp_path / "new"))
    assert code == 0, err
    assert "warning: unpickling" in err and "runs its code now" in err  # the risk, named where it is taken
    assert f"converted {old} to {tmp_path / 'new'}" in out
    assert not (tmp_path / "new" / "state.pt").exists() and not (tmp_path / "new" / "dcp").exists()
    assert load_state(tmp_path / "new")["step"] == 4
    a = resume(tiny_data, current, tmp_path / "from-original")
    b = resume(tiny_data, tmp_path / "new", tmp_path / "from-converted")
    assert a.keys() == b.keys() and len(a) > 20
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def test_convert_refuses_what_it_should_not_touch(current, tmp_path):
    code, _, err = cli("convert-checkpoint", str(current), str(tmp_path / "new"))
    assert code == 2 and err.count("\n") == 1 and "already in the current format" in err, err
    old = old_unsharded(current, tmp_path / "old")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    code, _, err = cli("convert-checkpoint", str(old), str(tmp_path / "full"))
    assert code == 2 and err.count("\n") == 1 and "is not an empty folder" in err, err
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"
    assert not (tmp_path / "new").exists()
