"""A run on a SentencePiece tokenizer (``data.tokenizer=PATH.model``), end to end: a model trained here, offline,
on our own generated sentences; data prepared with it; a tiny real training run; then that run generates,
exports (a transformers tokenizer of the same ids) and runs lm-eval, all through the one tokenizer layer."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch

import lowrank_lm
from lowrank_lm.data.tokenizer import SentencePieceTokenizer

from .conftest import tiny_run_config
from .ecosystem import cli, sentences
from .test_lm_eval import TASK, direct_accuracy, write_task

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

SP_VOCAB = 360  # 256 byte pieces (byte fallback), the generated sentences' characters, and some merges
MODEL_VOCAB = 384
TEXTS = ["the cat sat on the mat.", "A quick red bird flew over the river!", "caf\u00e9 \u00fcber 42"]


def train_sentencepiece(path: Path) -> Path:
    """A BPE SentencePiece model with <unk>, <s>, </s> (ids 0-2), the LLaMA layout, trained in memory."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences(400)), model_writer=model, vocab_size=SP_VOCAB,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module")
def sp_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run dir, .model file): the data prepared with the model, and 2 training steps on it."""
    from lowrank_lm.config import DataConfig
    from lowrank_lm.data import prepare
    from lowrank_lm.train import run_training

    root = tmp_path_factory.mktemp("sp-run")
    sp_model = train_sentencepiece(root / "words.model")
    data = prepare(DataConfig(source="embedded", tokenizer=str(sp_model), dir=str(root / "data"),
                              val_tokens=4096, max_tokens=30_000), progress=False)
    cfg = tiny_run_config(data, root / "run", f"data.tokenizer={sp_model}", f"model.vocab_size={MODEL_VOCAB}",
                          "model.seq_len=64", "data.val_tokens=4096", "data.max_tokens=30000", "train.tokens=1024",
                          "train.eval_tokens=512")
    run_training(cfg)
    return root / "run", sp_model


def test_the_run_keeps_the_model_and_loads_the_tokenizer_that_encoded_its_data(sp_run):
    run, sp_model = sp_run
    assert (run / "tokenizer.model").read_bytes() == sp_model.read_bytes()
    tok = lowrank_lm.load(run).tokenizer
    assert isinstance(tok, SentencePieceTokenizer)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    assert (tok.eot_token, tok.eot_id, tok.unk_token) == ("</s>", sp.eos_id(), "<unk>")
    for text in TEXTS:
        assert tok.encode(text) == sp.encode(text)  # sentencepiece's own encoding, not through our class


def test_generate_continues_a_prompt_greedily(sp_run):
    run, _ = sp_run
    code, out, err = cli("generate", str(run), "--prompt", "the cat", "--max-new-tokens", "8", "--temperature", "0",
                         "--device", "cpu")
    assert code == 0, err
    model = lowrank_lm.load(run)
    tok = model.tokenizer
    ids = tok.encode("the cat")
    new = model.generate(torch.tensor([ids]), 8, temperature=0)[0, len(ids):].tolist()
    if tok.eot_id in new:
        new = new[:new.index(tok.eot_id)]
    assert out == tok.decode(ids + new) + "\n"


def test_export_writes_a_transformers_tokenizer_of_the_same_ids(sp_run, tmp_path):
    run, sp_model = sp_run
    code, out, err = cli("export", str(run), str(tmp_path / "hf"))
    assert code == 0, err
    assert "with tokenizer" in out
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    for text in TEXTS:
        assert hf_tok(text).input_ids == sp.encode(text)  # no <s> added: the model never saw one
        assert hf_tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert (hf_tok.eos_token, hf_tok.bos_token, hf_tok.unk_token) == ("</s>", "</s>", "<unk>")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == sp.eos_id()


def test_lm_eval_scores_with_the_sentencepiece_tokenizer(sp_run, tmp_path):
    from lowrank_lm.export.lm_eval_adapter import run_lm_eval

    pytest.importorskip("lm_eval")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's JSONL is local
    run, _ = sp_run
    docs = write_task(tmp_path / "tasks", n=12)
    model = lowrank_lm.load(run)
    res = run_lm_eval(model, model.tokenizer, [TASK], batch_size=4, include_path=tmp_path / "tasks",
                      include_defaults=False, bootstrap_iters=0)
    assert res["results"][TASK]["acc,none"] == pytest.approx(direct_accuracy(model, model.tokenizer, docs),
                                                              abs=1e-12)
