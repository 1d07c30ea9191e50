"""Tokenizers: GPT-2 offline, the tokenizer.json kept for export, bpe training, exact round trips, pieces."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lowrank_lm.data import load_manifest, load_tokenizer
from lowrank_lm.data.embedded import embedded_books, embedded_text
from lowrank_lm.data.split import pieces
from lowrank_lm.data.tokenizer import GPT2Tokenizer, gpt2_tokenizer_json, parse_tokenizer_spec, train_bpe
from lowrank_lm.errors import UserError

TRICKY = ["Hello world!", "  two  spaces\n\n\nnewlines\t\ttabs   ", "naïve café — “quotes” 日本語 🙂",
          "don't they'll we've I'M", "x<|endoftext|>y", "1234567 3.14159 $5,000", "", " ", "trailing space "]


def test_gpt2_offline_gives_the_reference_ids():
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world!") == [15496, 995, 0]
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    # a special token's spelling inside a document is plain text: only the pipeline places end-of-text
    assert 50256 not in tok.encode("a<|endoftext|>b") and tok.decode([50256]) == "<|endoftext|>"


def test_gpt2_tokenizer_json_gives_the_same_ids_as_tiktoken():
    from tokenizers import Tokenizer

    hf = Tokenizer.from_str(gpt2_tokenizer_json())
    hf.encode_special_tokens = True
    tok = GPT2Tokenizer()
    sherlock = embedded_books()[0].text
    texts = [*TRICKY, *pieces(sherlock, 1 << 16)]
    assert [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)] == [tok.encode(t) for t in texts]
    assert hf.token_to_id("<|endoftext|>") == 50256 and hf.get_vocab_size() == 50257


def test_round_trip_is_exact_on_the_whole_corpus(tiny_data):
    text = embedded_text()
    for tok in (load_tokenizer(tiny_data), GPT2Tokenizer()):
        parts = pieces(text, 1 << 18)
        ids = np.concatenate(tok.encode_batch(parts))
        assert tok.decode(ids.tolist()) == text, tok.name
        assert all(tok.decode(tok.encode(t)) == t for t in TRICKY), tok.name


@pytest.mark.parametrize("which", ["bpe", "gpt2"])
def test_pieces_encode_to_the_ids_of_the_whole_text(which, tiny_data):
    tok = load_tokenizer(tiny_data) if which == "bpe" else GPT2Tokenizer()
    text = embedded_books()[0].text[:150_000] + "\n\n  odd   spacing \t\n end"
    parts = pieces(text, 1000)
    assert len(parts) > 100 and "".join(parts) == text
    whole = tok.encode_batch([text])[0]
    assert np.array_equal(np.concatenate(tok.encode_batch(parts)), whole)


def test_bpe_training_is_deterministic_and_has_the_asked_size():
    text = embedded_books()[0].text[:200_000]
    first = train_bpe(pieces(text, 10_000), 400)
    assert train_bpe(pieces(text, 10_000), 400) == first
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(first)
    assert tok.get_vocab_size() == 400 and tok.token_to_id("<|endoftext|>") == 0


def test_prepared_dir_keeps_a_hf_tokenizer_json_that_matches(tiny_data):
    from tokenizers import Tokenizer

    manifest = load_manifest(tiny_data)
    assert manifest.tokenizer == "bpe-512" and manifest.vocab_size == 512 and manifest.eot_id == 0
    assert set(manifest.tokenizer_files) == {"tokenizer.json"}
    hf = Tokenizer.from_file(str(tiny_data / "tokenizer.json"))
    tok = load_tokenizer(tiny_data)
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("bpe-512", 512, 0)
    assert hf.encode("Hello world!").ids == tok.encode("Hello world!")


def test_sentencepiece_model_file(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from lowrank_lm.config import DataConfig
    from lowrank_lm.data import prepare

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(embedded_books()[0].text[:300_000])
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                   model_type="bpe", eos_id=2, minloglevel=2, num_threads=1)
    data = prepare(DataConfig(source=str(corpus), tokenizer=str(tmp_path / "sp.model"), dir=str(tmp_path / "d"),
                              val_tokens=2000, num_workers=1), progress=False)
    m = load_manifest(data)
    assert m.tokenizer_kind == "sentencepiece" and m.vocab_size == 300 and m.eot_id == 2
    assert set(m.tokenizer_files) == {"tokenizer.model"}
    assert (data / "tokenizer.model").read_bytes() == (tmp_path / "sp.model").read_bytes()
    tok = load_tokenizer(data)
    assert tok.decode(tok.encode("Holmes said")) == "Holmes said"
    assert m.tokens["val"] == 2000 and m.tokens["train"] > 50_000


def test_hub_tokenizer_offline_is_one_clear_line(tmp_path):
    pytest.importorskip("transformers")
    # a fresh process, as a user runs it: the hub libraries read the offline switches when they are imported
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "lowrank_lm", "prepare", "data.tokenizer=llama",
                           f"data.dir={tmp_path / 'd'}", "--quiet"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "cannot load tokenizer 'hf-internal-testing/llama-tokenizer'" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("spec,message", [
    ("bpe-100", "at least 260"), ("bpe-big", "bpe-<size>"), ("missing.model", "no such SentencePiece model"),
])
def test_bad_tokenizer_names(spec, message):
    with pytest.raises(UserError, match=message):
        parse_tokenizer_spec(spec)


def test_spec_kinds():
    assert parse_tokenizer_spec("bpe-8192").known_vocab_size == 8192
    assert parse_tokenizer_spec("gpt2").known_vocab_size == 50257
    llama = parse_tokenizer_spec("llama")
    assert (llama.kind, llama.hf_name, llama.known_vocab_size) == ("hf", "hf-internal-testing/llama-tokenizer", None)
    assert parse_tokenizer_spec("mistralai/Mistral-7B-v0.1").kind == "hf"
