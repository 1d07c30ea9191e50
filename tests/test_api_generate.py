"""The Python API (lowrank_lm.load / build) and the generate verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowrank_lm
from lowrank_lm.cli import main
from lowrank_lm.errors import UserError
from lowrank_lm.model import Transformer

from .ecosystem import MODEL_VOCAB, make_run, make_tokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    tok = make_tokenizer(root / "data" / "tokenizer.json")
    make_run(root / "run", ["model.ffn.kind=lowrank", "model.ffn.rank=16"], tok)
    return root / "run"


def generate_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(["generate", *argv])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_import_is_cheap_and_api_is_lazy():
    code = "import sys, lowrank_lm; print('torch' in sys.modules); lowrank_lm.load; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "True"], proc.stderr
    assert {"load", "build"} <= set(dir(lowrank_lm))
    with pytest.raises(AttributeError):
        lowrank_lm.nonexistent  # noqa: B018


def test_load_a_run_dir_or_a_checkpoint(run_dir):
    model = lowrank_lm.load(run_dir)
    ckpt = next((run_dir / "checkpoints").iterdir())
    same = lowrank_lm.load(ckpt)
    assert isinstance(model, Transformer) and not model.training
    assert model.config.model.ffn.kind == "lowrank"
    assert model.checkpoint == ckpt
    ids = torch.tensor([model.tokenizer.encode("the cat sat on the mat.")])
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], MODEL_VOCAB)
    assert torch.equal(logits, same(ids))
    out = model.generate(ids, max_new_tokens=5, temperature=0)
    assert out.shape == (1, ids.shape[1] + 5) and torch.equal(out[:, :ids.shape[1]], ids)


def test_load_without_tokenizer_gives_none(tmp_path):
    make_run(tmp_path / "run", [])
    assert lowrank_lm.load(tmp_path / "run").tokenizer is None


def test_build_from_yaml_with_overrides_and_from_a_config():
    model = lowrank_lm.build("configs/cpu/tiny.yaml", overrides=["model.ffn.kind=lowrank", "model.ffn.rank=32",
                                                                 "model.num_layers=2"])
    assert model.config.model.ffn.rank == 32 and len(model.blocks) == 2
    assert model.tokenizer is None
    assert model.blocks[1].ffn.up.u.shape == (512, 32)
    again = lowrank_lm.build(model.config, overrides=["model.ffn.rank=16"])
    assert again.blocks[1].ffn.up.u.shape == (512, 16)
    assert model.config.model.ffn.rank == 32  # the config passed in is not changed
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 8192)


def test_build_refuses_a_bad_override_in_one_line():
    with pytest.raises(UserError, match=r"did you mean model\.ffn\.rank"):
        lowrank_lm.build(None, overrides=["model.ffn.rnak=3"])


def test_generate_prints_the_greedy_continuation(run_dir, capsys):
    code, out, err = generate_cli(capsys, str(run_dir), "--prompt", "the dog ran", "--max-new-tokens", "12",
                                  "--temperature", "0", "--device", "cpu")
    assert code == 0, err
    model = lowrank_lm.load(run_dir)
    tok = model.tokenizer
    ids = tok.encode("the dog ran")
    new = model.generate(torch.tensor([ids]), 12, temperature=0)[0, len(ids):].tolist()
    eos = tok.eot_id
    if eos in new:
        new = new[:new.index(eos)]
    assert out == tok.decode(ids + new) + "\n"
    assert len(out) > len("the dog ran\n")


def test_generate_sampling_is_repeatable_with_a_seed(run_dir, capsys):
    argv = [str(run_dir), "--prompt", "a bird", "--max-new-tokens", "20", "--temperature", "1.5", "--top-k", "40",
            "--top-p", "0.9", "--device", "cpu"]
    first = generate_cli(capsys, *argv, "--seed", "1")[1]
    assert generate_cli(capsys, *argv, "--seed", "1")[1] == first
    others = {generate_cli(capsys, *argv, "--seed", str(s))[1] for s in (2, 3, 4)}
    assert others - {first}  # another seed, other text
    assert first.startswith("a bird")


@pytest.mark.parametrize("argv,message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--device", "cuda:7"], "--device=cuda:7"),
    (["--prompt", "the " * 40], "shorten the prompt"),
])
def test_generate_user_errors_are_one_line(run_dir, capsys, argv, message):
    if "--device" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code, _, err = generate_cli(capsys, str(run_dir), "--prompt", "the", *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_generate_with_static_decoding_prints_the_eager_text(run_dir, capsys):
    argv = (str(run_dir), "--prompt", "the cat", "--max-new-tokens", "8", "--temperature", "0", "--device", "cpu")
    code, eager, err = generate_cli(capsys, *argv, "--decode", "eager")
    assert code == 0, err
    code, static, err = generate_cli(capsys, *argv, "--decode", "static")
    assert code == 0, err
    assert static == eager and len(eager) > len("the cat\n")
