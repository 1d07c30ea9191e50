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

from lowrank_lm.cli import VERBS, main
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
    skip: Callable[[], str | None] | None = None
    """Why the case does not apply on this machine (e.g. wandb installed), or None."""


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


def _stock_hf_folder(data: Path, tmp: Path) -> None:
    """A transformers folder whose config.json records no structures (what a stock save_pretrained writes)."""
    (tmp / "hf").mkdir()
    _write(tmp / "hf" / "config.json", json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))


def _structurized_hf_folder(data: Path, tmp: Path) -> None:
    """A config.json that records structures: enough for eval to take the transformers path."""
    (tmp / "hf").mkdir()
    _write(tmp / "hf" / "config.json", json.dumps({"model_type": "llama", "lowrank_lm_structures": {
        "model.layers.0.mlp.up_proj": {"kind": "lowrank"}}}))


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


_TRAINED: dict[str, Path] = {}


def _trained_run(data: Path, tmp: Path) -> None:
    """TMP/run: a run with a checkpoint of step 4 (trained once per session, copied for each case)."""
    import shutil

    from lowrank_lm.train import run_training

    if "run" not in _TRAINED:
        cache = data.parent / "bad-input-run"  # beside the session's data: pytest's temporary folder
        run_training(tiny_run_config(data, cache), max_steps=4)
        _TRAINED["run"] = cache
    shutil.copytree(_TRAINED["run"], tmp / "run")


def _ckpt(tmp: Path) -> Path:
    return tmp / "run" / "checkpoints" / "step-00000004"


def _truncate_weights(data: Path, tmp: Path) -> None:
    _trained_run(data, tmp)
    weights = _ckpt(tmp) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _gen(tmp: Path, *flags: str) -> list[str]:
    return ["generate", str(tmp / "run"), "--prompt", "The", *flags]


def _csv(name: str, body: bytes) -> Callable[[Path, Path], None]:
    return lambda d, t: (t / name).write_bytes(body)


def _sweep(body: str) -> Callable[[Path, Path], None]:
    """TMP/sweep.yaml: a sweep over the tiny run config (TMP/run.yaml) with ``body`` after its header."""
    return lambda d, t: _write(t / "sweep.yaml", f"name: s\nout_dir: {t / 'sweep-out'}\nbase: run.yaml\n{body}")


TWO_SIZES = "sizes:\n  a: {overrides: []}\nstructures:\n  dense: {}\n"


def _wandb_missing() -> str | None:
    import importlib.util

    return "wandb is installed here" if importlib.util.find_spec("wandb") else None


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
    # optimiser settings: checked with the config, before the run folder is locked
    Case("AdamW beta above 1", lambda d, t: _run_cfg(d, t, "train.betas=[1.5,0.9]"), "beta1=1.5 must be in [0, 1)"),
    Case("negative AdamW epsilon", lambda d, t: _run_cfg(d, t, "train.eps=-1"), "train.eps must be zero or positive"),
    Case("negative weight decay", lambda d, t: _run_cfg(d, t, "train.weight_decay=-1"),
         "train.weight_decay must be zero or positive"),
    Case("a learning rate that is not a number", lambda d, t: _run_cfg(d, t, "train.lr=.nan"),
         "train.lr must be positive and finite, got nan"),
    Case("an infinite learning rate", lambda d, t: ["info", TINY, "train.lr=.inf"],
         "train.lr must be positive and finite, got inf"),
    Case("negative gradient clipping", lambda d, t: ["info", TINY, "train.grad_clip=-1"],
         "train.grad_clip must be zero or positive"),
    Case("a warmup longer than the run", lambda d, t: ["info", TINY, "train.warmup_ratio=2"],
         "train.warmup_ratio must be between 0 and 1"),
    Case("a structure larger than the dense FFN", lambda d, t: ["info", TINY, "model.ffn.kind=lowrank",
                                                                "model.ffn.rank=128"],
         "the largest setting that saves weights is model.ffn.rank=102"),
    Case("a structured attention larger than dense", lambda d, t: ["info", TINY, "model.attn.kind=lowrank",
                                                                   "model.attn.rank=128"],
         "the largest setting that saves weights is model.attn.rank=85"),
    Case("a fraction above 1", lambda d, t: ["info", TINY, "model.ffn.kind=lowrank", "model.ffn.fraction=1.5"],
         "model.ffn.fraction must be between 0 and 1"),
    Case("a setting of another structure", lambda d, t: ["info", TINY, "model.ffn.num_blocks=4"],
         "model.ffn.num_blocks=4 does not apply to model.ffn.kind=dense"),
    # 4 x 10^8 tokens a micro-batch: the loss alone needs 760 GiB, more than any machine that runs these tests
    Case("a model that cannot fit in memory", lambda d, t: _run_cfg(d, t, "model.seq_len=100000000",
                                                                    "train.tokens=1000000000"),
         "LOWRANK_LM_MEMORY_CHECK=off"),
    Case("wandb asked for but not installed", lambda d, t: _run_cfg(d, t, "train.wandb=true"),
         "train.wandb=true but wandb is not installed", skip=_wandb_missing),
    Case("resuming a folder that is not a run", lambda d, t: ["train", str(t)], "is a folder without config.yaml"),
    Case("moving a run while resuming it", lambda d, t: ["train", str(t / "run"), f"train.out_dir={t / 'x'}"],
         "train.out_dir cannot be set when resuming", _trained_run),
    # eval, generate, export: flags and checkpoints
    Case("eval with batch size 0", lambda d, t: ["eval", str(t / "run"), "--batch-size", "0"],
         "--batch-size must be at least 1", _trained_run),
    Case("eval on 0 tokens", lambda d, t: ["eval", str(t / "run"), "--tokens", "0"], "--tokens must be at least 1",
         _trained_run),
    Case("eval on less than one sequence", lambda d, t: ["eval", str(t / "run"), "--tokens", "5", "--device", "cpu"],
         "less than one validation sequence (32 tokens)", _trained_run),
    Case("eval of a path that does not exist", lambda d, t: ["eval", str(t / "nope")], "nope"),
    Case("eval of a transformers folder that is not structurized", lambda d, t: ["eval", str(t / "hf")],
         "without lowrank_lm_structures in its config.json (not structurized)", _stock_hf_folder),
    Case("eval of a structurized transformers folder without data", lambda d, t: ["eval", str(t / "hf")],
         "give --data, a prepared data dir made with its tokenizer", _structurized_hf_folder),
    Case("eval of a run with --seq-len", lambda d, t: ["eval", str(t / "run"), "--seq-len", "16"],
         "--seq-len applies to transformers folders", _trained_run),
    Case("eval of a truncated checkpoint", lambda d, t: ["eval", str(_ckpt(t)), "--device", "cpu"],
         "model.safetensors", _truncate_weights),
    Case("generate with a negative top-k", lambda d, t: _gen(t, "--top-k", "-5"),
         "--top-k must be 0 (all tokens) or positive, got -5", _trained_run),
    Case("generate with a negative temperature", lambda d, t: _gen(t, "--temperature", "-1"),
         "--temperature must be 0 (greedy) or positive", _trained_run),
    Case("generate with a temperature that is not a number",
         lambda d, t: _gen(t, "--temperature", "nan"), "--temperature must be 0 (greedy) or "
         "positive, got nan", _trained_run),
    Case("generate with top-p above 1", lambda d, t: _gen(t, "--top-p", "1.5"),
         "--top-p must be in (0, 1]", _trained_run),
    Case("generate no tokens", lambda d, t: _gen(t, "--max-new-tokens", "0"),
         "--max-new-tokens must be at least 1", _trained_run),
    Case("generate with a negative pre-merge threshold",
         lambda d, t: _gen(t, "--premerge-tokens", "-1"),
         "--premerge-tokens must be 0 (off) or positive", _trained_run),
    Case("export of a folder without checkpoints", lambda d, t: ["export", str(t), str(t / "hf")],
         "holds no complete checkpoint"),
    Case("export in a dtype that does not exist", lambda d, t: ["export", str(t / "run"), str(t / "hf"), "--dtype",
                                                                "fp8"], "invalid choice: 'fp8'", _trained_run),
    Case("a checkpoint whose config.yaml is damaged", lambda d, t: ["eval", str(_ckpt(t)), "--device", "cpu"],
         "malformed YAML", lambda d, t: (_trained_run(d, t), _write(_ckpt(t) / "config.yaml", "model: [\n"))),
    Case("lm-eval of a transformers folder that is not structurized",
         lambda d, t: ["lm-eval", str(t / "hf"), "--tasks", "x"], "(not structurized)", _stock_hf_folder),
    Case("lm-eval of a structurized folder without a tokenizer",
         lambda d, t: ["lm-eval", str(t / "hf"), "--tasks", "x"], "has no tokenizer; lm-eval scores text",
         _structurized_hf_folder),
    Case("lm-eval with batch size 0", lambda d, t: ["lm-eval", str(t / "run"), "--tasks", "x", "--batch-size", "0"],
         "--batch-size must be at least 1", _trained_run),
    Case("lm-eval with no tasks", lambda d, t: ["lm-eval", str(t / "run"), "--tasks", ","], "--tasks is empty",
         _trained_run),
    # data: prepare
    Case("a .jsonl that is not UTF-8", lambda d, t: ["prepare", TINY, f"data.source={t / 'x.jsonl'}",
                                                     f"data.dir={t / 'out'}"], "x.jsonl:2 is not UTF-8 text",
         _csv("x.jsonl", b'{"text": "hello"}\n{"text": "caf\xe9"}\n')),
    Case("a .jsonl line that is not JSON", lambda d, t: ["prepare", TINY, f"data.source={t / 'y.jsonl'}",
                                                         f"data.dir={t / 'out'}"], "y.jsonl:1 is not valid JSON",
         _csv("y.jsonl", b"{text: unquoted}\n")),
    Case("a .jsonl without the text field", lambda d, t: ["prepare", TINY, f"data.source={t / 'z.jsonl'}",
                                                          f"data.dir={t / 'out'}"], "has no field 'text'",
         _csv("z.jsonl", b'{"body": "hello"}\n')),
    # results files: fit
    Case("fit on a binary file", lambda d, t: ["fit", str(t / "r.csv")], "is not a UTF-8 text CSV",
         _csv("r.csv", bytes(range(256)))),
    Case("fit on a CSV with NUL bytes", lambda d, t: ["fit", str(t / "r.csv")], "is a binary file, not a CSV",
         _csv("r.csv", b"series,flops,loss\n\0\0,1,2\n")),
    Case("fit on a results file that does not exist", lambda d, t: ["fit", str(t / "none.csv")],
         "results file not found"),
    Case("fit on a CSV without a loss column", lambda d, t: ["fit", str(t / "r.csv")], "missing column(s) loss",
         _csv("r.csv", b"series,flops\ndense,1e15\n")),
    Case("fit on a negative loss", lambda d, t: ["fit", str(t / "r.csv")], "must be positive for a log-space fit",
         _csv("r.csv", b"series,flops,loss\ndense,1e15,-3\n")),
    Case("fit on a loss that is not a number", lambda d, t: ["fit", str(t / "r.csv")], "loss",
         _csv("r.csv", b"series,flops,loss\ndense,1e15,abc\n")),
    # sweep files and flags
    Case("a sweep file that does not exist", lambda d, t: ["sweep", str(t / "none.yaml"), "--dry-run"], "none.yaml"),
    Case("a sweep file with an unknown key", lambda d, t: ["sweep", str(t / "sweep.yaml"), "--dry-run"],
         "sizez", _sweep("sizez: {}\n" + TWO_SIZES)),
    Case("a Slurm-only setting in a dry run without Slurm",
         lambda d, t: ["sweep", str(t / "sweep.yaml"), "--dry-run", "--executor", "submitit", "--cluster",
                       "partition=gpu"], "cluster.partition applies to Slurm", _sweep(TWO_SIZES)),
    Case("--detach in a dry run without Slurm",
         lambda d, t: ["sweep", str(t / "sweep.yaml"), "--dry-run", "--executor", "submitit", "--detach"],
         "--detach needs Slurm", _sweep(TWO_SIZES)),
    Case("GPUs per run without GPUs", lambda d, t: ["sweep", str(t / "sweep.yaml"), "--gpus-per-run", "2"],
         "--gpus-per-run needs --gpus", _sweep(TWO_SIZES)),
    Case("the same GPU twice", lambda d, t: ["sweep", str(t / "sweep.yaml"), "--gpus", "0,0"],
         "give distinct GPU numbers", _sweep(TWO_SIZES)),
    Case("an option of the other executor", lambda d, t: ["sweep", str(t / "sweep.yaml"), "--detach"],
         "--detach applies to --executor submitit", _sweep(TWO_SIZES)),
    # demo, config, compare, bench, plan
    Case("demo of a config that does not exist", lambda d, t: ["demo", str(t / "nope.yaml"), "--out", str(t / "d")],
         "config file not found"),
    Case("demo with a misspelt override", lambda d, t: ["demo", TINY, "model.hiden_dim=64", "--out", str(t / "d")],
         "did you mean model.hidden_dim?"),
    Case("config with an override but no config file", lambda d, t: ["config", "model.lr"],
         "config file not found"),
    Case("config of a file with --markdown", lambda d, t: ["config", TINY, "--markdown"],
         "--markdown prints the reference; it does not apply with CONFIG"),
    Case("compare a folder that is not a run", lambda d, t: ["compare", str(t / "nope")], "nope"),
    # the verbs of this session: coord-check, convert-checkpoint, structurize
    Case("coord-check at a single width", lambda d, t: ["coord-check", TINY, "--widths", "64"],
         "--widths needs two or more positive widths"),
    Case("coord-check with zero steps", lambda d, t: ["coord-check", TINY, "--steps", "0"],
         "--steps takes a positive integer"),
    Case("convert-checkpoint of a folder that is no checkpoint", lambda d, t: ["convert-checkpoint", str(t),
                                                                              str(t / "converted")],
         "is neither a checkpoint folder"),
    Case("structurize a folder that is not a transformers model",
         lambda d, t: ["structurize", str(t), str(t / "small"), "--kind", "lowrank", "--fraction", "0.5"],
         "is not a transformers model folder (no config.json)"),
    Case("bench with zero rounds", lambda d, t: ["bench", "ffn", "--rounds", "0"], "--rounds 0 must be positive"),
    Case("bench with zero threads", lambda d, t: ["bench", "ffn", "--threads", "0"], "--threads 0 must be positive"),
    Case("plan with an interval level above 1", lambda d, t: ["plan", "--fits", str(t / "f.json"),
                                                              "--budget-flops", "1e19", "--level", "1.5"],
         "--level must be between 0 and 1"),
    Case("a flag value of the wrong type", lambda d, t: ["eval", str(t), "--batch-size", "eight"],
         "invalid int value: 'eight'"),
    # the sweep file's learning-rate axis
    Case("a sweep with a learning rate of zero", lambda d, t: ["sweep", str(t / "sweep.yaml"), "--dry-run"],
         "learning_rates: 0.0 is not a positive learning rate", _sweep(TWO_SIZES + "learning_rates: [1e-3, 0]\n")),
    Case("a sweep with an empty list of learning rates", lambda d, t: ["sweep", str(t / "sweep.yaml"), "--dry-run"],
         "learning_rates must be a non-empty list", _sweep(TWO_SIZES + "learning_rates: []\n")),
    Case("a structure with learning_rates and a train.lr override",
         lambda d, t: ["sweep", str(t / "sweep.yaml"), "--dry-run"],
         "structures.dense.overrides has 'train.lr=2e-3' while structures.dense.learning_rates sets",
         _sweep("sizes:\n  a: {overrides: []}\nstructures:\n  dense: {learning_rates: [1e-3], "
                "overrides: [train.lr=2e-3]}\n")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_is_one_clear_line(case, tiny_data, tmp_path, capsys):
    why = case.skip() if case.skip is not None else None
    if why:
        pytest.skip(why)
    save_config(tiny_run_config(tiny_data, tmp_path / "run"), tmp_path / "run.yaml")
    if case.setup is not None:
        case.setup(tiny_data, tmp_path)
    argv = case.argv(tiny_data, tmp_path)
    capsys.readouterr()
    before = _snapshot(tmp_path, tiny_data)
    with pytest.raises(SystemExit) as code:
        main(argv)
    _out, err = capsys.readouterr()
    assert code.value.code == 2, err
    assert case.expect in err, err
    # progress notes may come first (e.g. "data already prepared"); the error is one line, the last one
    lines = err.splitlines()
    assert "Traceback" not in err and [x for x in lines if ": error: " in x] == lines[-1:], err
    after = _snapshot(tmp_path, tiny_data)
    assert after == before, "a file was written, changed or left behind"


def _snapshot(*roots: Path) -> dict[Path, tuple[int, int] | None]:
    """Every path under ``roots`` with its size and modification time (None for a folder; for a lock file only
    that it exists: taking an existing run's lock rewrites it, and no lock may be left where none was)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() and not p.name.endswith(".lock") else None
            for root in roots for p in root.rglob("*")}


def test_the_reliability_doc_lists_every_case():
    doc = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    assert f"\n{markdown()}\n" in doc, "docs/reliability.md's bad-input table is not CASES': run python -m " \
        "tests.test_bad_input and paste its output there"
    assert len(CASES) >= 60 and set(VERBS) <= {c.argv(Path("D"), Path("T"))[0] for c in CASES}  # every verb


def markdown() -> str:
    """The docs/reliability.md table of the cases."""
    rows = ["| # | what the user did | command | the one line contains |", "|---|---|---|---|"]
    for i, c in enumerate(CASES, 1):
        argv = " ".join(c.argv(Path("DATA"), Path("TMP")))
        rows.append(f"| {i} | {c.what} | `lowrank-lm {argv}` | {c.expect} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
