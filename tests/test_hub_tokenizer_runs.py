"""Runs whose data used a hub tokenizer (``llama``, a hub name or a saved folder): the trainer keeps the
``tokenizer/`` folder, and loading, generation and export find it and use its own eos (``</s>``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lowrank_lm
from lowrank_lm.data.tokenizer import TransformersTokenizer, copy_tokenizer

from .conftest import tiny_run_config
from .ecosystem import MODEL_VOCAB, cli, make_hub_tokenizer, make_run

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory) -> Path:
    """A run dir holding a checkpoint and, as the trainer leaves it, the data dir's tokenizer/ folder."""
    root = tmp_path_factory.mktemp("hub-run")
    data = root / "data"
    make_hub_tokenizer(data / "tokenizer")
    run = root / "run"
    make_run(run, [])
    copy_tokenizer(data, run)
    return run


def test_load_finds_the_folder_and_its_eos(hub_run):
    model = lowrank_lm.load(hub_run)
    tok = model.tokenizer
    assert isinstance(tok, TransformersTokenizer)  # the class that encoded the data
    assert (tok.eot_token, tok.eot_id, tok.unk_token) == ("</s>", 2, "<unk>")


def test_generate_from_an_empty_prompt_starts_at_the_hub_eos(hub_run):
    from lowrank_lm.textgen import prompt_ids

    model = lowrank_lm.load(hub_run)
    assert prompt_ids(model.tokenizer, "", model.cfg.seq_len) == [2]  # </s>, not <|endoftext|>
    code, _, err = cli("generate", str(hub_run), "--prompt", "", "--max-new-tokens", "5", "--temperature", "0")
    assert code == 0, err


def test_export_carries_the_hub_eos(hub_run, tmp_path):
    code, _, err = cli("export", str(hub_run), str(tmp_path / "hf"))
    assert code == 0, err
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    # bos = eos = </s>: the token the model saw between documents (<s> never occurs in our training data)
    assert (tok.eos_token, tok.bos_token, tok.unk_token) == ("</s>", "</s>", "<unk>")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["eos_token_id"], config["bos_token_id"]) == (2, 2)
    assert tok("the cat sat").input_ids == lowrank_lm.load(hub_run).tokenizer.encode("the cat sat")


def test_training_on_a_hub_tokenizer_keeps_it_in_the_run_dir(tmp_path):
    from lowrank_lm.config import DataConfig
    from lowrank_lm.data import prepare
    from lowrank_lm.train import run_training

    folder = make_hub_tokenizer(tmp_path / "hub-tokenizer")
    data = prepare(DataConfig(source="embedded", tokenizer=str(folder), dir=str(tmp_path / "data"),
                              val_tokens=4096, max_tokens=30_000), progress=False)
    assert (data / "tokenizer" / "tokenizer.json").is_file() and not (data / "tokenizer.json").exists()
    cfg = tiny_run_config(data, tmp_path / "runs", f"data.tokenizer={folder}", f"model.vocab_size={MODEL_VOCAB}",
                          "data.val_tokens=4096", "data.max_tokens=30000", "train.tokens=1024",
                          "train.eval_tokens=512")
    run_training(cfg)
    run = tmp_path / "runs"
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert lowrank_lm.load(run).tokenizer.eot_token == "</s>"
