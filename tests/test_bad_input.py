"""Every mistake a user can make ends in one line naming the problem and the fix, exit code 2, no traceback,
and no partial output. The table in docs/reliability.md is printed from CASES:

    python -m tests.test_bad_input
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lowrank_lm.cli import main
from lowrank_lm.config import save_config

from .conftest import tiny_run_config

TINY = "configs/cpu/tiny.yaml"


@dataclass
class Case:
    what: str
    """What the user did."""
    argv: Callable[[Path, Path], list[str]]
    """Command-line arguments, given the tiny data dir and a scratch dir."""
    expect: str
    """A fragment of the one-line message."""
    setup: Callable[[Path, Path], None] | None = None
    """Damage done before the command (to a copy of the data in the scratch dir)."""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run_cfg(data: Path, tmp: Path, *overrides: str) -> list[str]:
    """`train` on TMP/run.yaml, the tiny run config that every case finds written (see the test)."""
    return ["train", str(tmp / "run.yaml"), *overrides]


def _copy_data(data: Path, tmp: Path) -> Path:
    import shutil

    dst = tmp / "data"
    if not dst.exists():
        shutil.copytree(data, dst)
    return dst


def _train_shard(data_dir: Path) -> Path:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    return data_dir / next(s["path"] for s in manifest["shards"] if s["split"] == "train")


def _flip_byte(data: Path, tmp: Path) -> None:
    shard = _train_shard(_copy_data(data, tmp))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))


def _truncate(data: Path, tmp: Path) -> None:
    shard = _train_shard(_copy_data(data, tmp))
    shard.write_bytes(shard.read_bytes()[:-6])


def _other_tokenizer(data: Path, tmp: Path) -> None:
    d = _copy_data(data, tmp)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["tokenizer"] = "gpt2"
    (d / "manifest.json").write_text(json.dumps(manifest))


def _finished_run(data: Path, tmp: Path) -> None:
    from lowrank_lm.train import run_training

    run_training(tiny_run_config(data, tmp / "run", "train.tokens=1024"))


def _other_model_checkpoint(data: Path, tmp: Path) -> None:
    from lowrank_lm.train import run_training

    run_training(tiny_run_config(data, tmp / "run"), max_steps=4)


def _pickle_bomb(data: Path, tmp: Path) -> None:
    import torch

    _other_model_checkpoint(data, tmp)
    ckpt = sorted((tmp / "run" / "checkpoints").glob("step-*"))[-1]

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"step": 4, "x": Evil()}, ckpt / "state.pt")  # as an earlier release wrote it
    for name in ("state.json", "state.safetensors"):
        (ckpt / name).unlink()


CASES: list[Case] = [
    Case("malformed YAML", lambda d, t: ["info", str(t / "bad.yaml")], "malformed YAML at line",
         lambda d, t: _write(t / "bad.yaml", "model: {hidden_dim: 4\n")),
    Case("config file that does not exist", lambda d, t: ["info", str(t / "nope.yaml")], "config file not found"),
    Case("config that is a list, not a mapping", lambda d, t: ["info", str(t / "l.yaml")], "expected a mapping",
         lambda d, t: _write(t / "l.yaml", "- 1\n")),
    Case("a base file chain that loops", lambda d, t: ["info", str(t / "loop.yaml")], "loops back to itself",
         lambda d, t: _write(t / "loop.yaml", "base: loop.yaml\n")),
    Case("YAML that tries to run code", lambda d, t: ["info", str(t / "evil.yaml")], "malformed YAML",
         lambda d, t: _write(t / "evil.yaml", "model: !!python/object/apply:os.system ['true']\n")),
    Case("unknown key (typo)", lambda d, t: ["info", TINY, "model.hiden_dim=64"],
         "unknown config key model.hiden_dim; did you mean model.hidden_dim?"),
    Case("unknown section", lambda d, t: ["info", TINY, "trian.lr=1"], "unknown config key trian; did you mean train?"),
    Case("override without '='", lambda d, t: ["info", TINY, "model.hidden_dim"], "has no '='"),
    Case("wrong type", lambda d, t: ["info", TINY, "model.num_layers=four"], "model.num_layers: expected int"),
    Case("fractional count", lambda d, t: ["info", TINY, "model.num_layers=2.5"], "expected a whole number"),
    Case("misspelt choice", lambda d, t: ["info", TINY, "model.norm=layernrm"], "did you mean 'layernorm'"),
    Case("rank larger than the layer", lambda d, t: ["info", TINY, "model.ffn.kind=lowrank", "model.ffn.rank=4096"],
         "model.ffn.rank=4096 is larger than min(hidden_dim, ffn_dim)=128"),
    Case("structured FFN without its rank", lambda d, t: ["info", TINY, "model.ffn.kind=blockdense",
                                                           "model.ffn.num_blocks=4"], "model.ffn.rank is required"),
    Case("heads that do not divide attn_dim", lambda d, t: ["info", TINY, "model.num_q_heads=3"],
         "model.num_q_heads=3 does not divide attn_dim=128"),
    Case("q heads not a multiple of kv heads", lambda d, t: ["info", TINY, "model.num_kv_heads=3"],
         "is not a multiple of model.num_kv_heads=3"),
    Case("blocks that do not divide the FFN", lambda d, t: ["info", TINY, "model.ffn.kind=blockshuffle",
                                                             "model.ffn.num_blocks=3"], "num_blocks=3 does not divide"),
    Case("dense block index out of range", lambda d, t: ["info", TINY, "model.ffn.keep_dense_layers=[9]"],
         "keep_dense_layers: 9 is not a block index"),
    Case("negative learning rate", lambda d, t: ["info", TINY, "train.lr=-0.1"], "train.lr must be positive"),
    Case("both token budgets", lambda d, t: ["info", TINY, "train.tokens=100", "train.tokens_per_param=20"],
         "set only one of train.tokens and train.tokens_per_param"),
    Case("a micro-batch that does not divide the batch", lambda d, t: ["info", TINY, "train.global_batch_size=10",
                                                                        "train.micro_batch_size=4"],
         "does not divide train.global_batch_size=10"),
    Case("self-guided training of a dense model", lambda d, t: ["info", TINY, "train.self_guided.enabled=true"],
         "self_guided needs a structured FFN"),
    Case("a token budget below one step", lambda d, t: _run_cfg(d, t, "train.tokens=100"),
         "less than one step of 256 tokens"),
    Case("a device that does not exist", lambda d, t: _run_cfg(d, t, "train.device=cuda:3"),
         "CUDA is not available here"),
    Case("a device name that is not a device", lambda d, t: _run_cfg(d, t, "train.device=quantum"),
         "train.device='quantum' is not a device"),
    Case("an out_dir that cannot be written", lambda d, t: _run_cfg(d, t, f"train.out_dir={t / 'run.yaml'}/x"),
         "cannot write to"),
    Case("training again into a finished run", lambda d, t: _run_cfg(d, t, "train.tokens=1024"),
         "holds a finished run; pass --overwrite", _finished_run),
    Case("resuming a checkpoint of another model", lambda d, t: _run_cfg(d, t, "model.hidden_dim=64"),
         "was trained with another model config", _other_model_checkpoint),
    Case("a crafted pickle in a checkpoint", lambda d, t: _run_cfg(d, t),
         "convert-checkpoint", _pickle_bomb),
    Case("evaluating a folder without checkpoints", lambda d, t: ["eval", str(t)], "holds no complete checkpoint"),
    Case("a shard with one flipped byte", lambda d, t: _run_cfg(d, t, f"data.dir={t / 'data'}"), "sha256",
         _flip_byte),
    Case("a truncated shard", lambda d, t: _run_cfg(d, t, f"data.dir={t / 'data'}"), "truncated", _truncate),
    Case("shards made with another tokenizer", lambda d, t: _run_cfg(d, t, f"data.dir={t / 'data'}"),
         "tokenizer", _other_tokenizer),
    Case("a vocabulary larger than the model", lambda d, t: _run_cfg(d, t, "model.vocab_size=256"),
         "vocab"),
    Case("a data file that does not exist", lambda d, t: ["prepare", TINY, f"data.source={t / 'none.txt'}",
                                                          f"data.dir={t / 'out'}"], "none.txt"),
    Case("an empty data file", lambda d, t: ["prepare", TINY, f"data.source={t / 'empty.txt'}",
                                             f"data.dir={t / 'out'}"], "empty",
         lambda d, t: _write(t / "empty.txt", "")),
    Case("an unknown verb", lambda d, t: ["trian"], "did you mean train?"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_is_one_clear_line(case, tiny_data, tmp_path, capsys):
    save_config(tiny_run_config(tiny_data, tmp_path / "run"), tmp_path / "run.yaml")
    if case.setup is not None:
        case.setup(tiny_data, tmp_path)
    argv = case.argv(tiny_data, tmp_path)
    capsys.readouterr()
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as code:
        main(argv)
    _out, err = capsys.readouterr()
    assert code.value.code == 2, err
    assert case.expect in err, err
    # progress notes may come first (e.g. "data already prepared"); the error is one line, the last one
    lines = err.splitlines()
    assert "Traceback" not in err and [x for x in lines if ": error: " in x] == lines[-1:], err
    after = sorted(p for p in tmp_path.rglob("*"))
    assert after == before, "partial output left behind"


def markdown() -> str:
    """The docs/reliability.md table of the cases."""
    rows = ["| # | what the user did | command | the one line contains |", "|---|---|---|---|"]
    for i, c in enumerate(CASES, 1):
        argv = " ".join(c.argv(Path("DATA"), Path("TMP")))
        rows.append(f"| {i} | {c.what} | `lowrank-lm {argv}` | {c.expect} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
