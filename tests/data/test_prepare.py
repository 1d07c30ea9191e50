"""prepare: exact split sizes, no validation text in training, same output for any worker count, resumable,
idempotent, and nothing half-written left behind."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lowrank_lm.config import DataConfig
from lowrank_lm.data import load_manifest, load_tokenizer, prepare, prepare_data, resolve_data_dir
from lowrank_lm.data import shards as shards_module
from lowrank_lm.data.embedded import embedded_books
from lowrank_lm.data.files import file_sha256
from lowrank_lm.data.sources import open_source
from lowrank_lm.data.split import bpe_training_texts
from lowrank_lm.errors import UserError

from .conftest import paragraphs, segments, split_ids, write_jsonl


def shard_hashes(data_dir):
    return [(s.path, s.tokens, s.sha256) for s in load_manifest(data_dir).shards]


def test_manifest_of_the_tiny_data(tiny_data):
    m = load_manifest(tiny_data)
    assert m.source == "embedded" and m.split_mode == "tail" and m.dtype == "uint16"
    assert m.tokens == {"train": 120_000 - 8192, "val": 8192}  # max_tokens exactly, validation exactly
    assert m.documents == {"train": 4, "val": 4}
    assert m.source_identity["sha256"] == "fa066c7d40f0f201ac4144e652aa62430e58a6b3805ec70650f678da5804e87b"
    assert m.tool_version and m.settings["val_tokens"] == 8192 and m.settings["max_tokens"] == 120_000
    raw = json.loads((tiny_data / "manifest.json").read_text())
    assert {"tokenizer", "vocab_size", "tokens", "shards", "source", "tool_version"} <= set(raw)
    for s in raw["shards"]:
        assert set(s) == {"path", "split", "tokens", "sha256"}
        assert (tiny_data / s["path"]).stat().st_size == 2 * s["tokens"]
        assert file_sha256(tiny_data / s["path"]) == s["sha256"]


@pytest.mark.parametrize("fixture", ["tiny_data", "gpt2_data"])
def test_validation_is_the_tail_of_every_book_and_never_in_training(fixture, request):
    data = request.getfixturevalue(fixture)
    m, tok = load_manifest(data), load_tokenizer(data)
    books = [b.text for b in embedded_books()]
    val = segments(split_ids(data, "val"), m.eot_id)
    train = segments(split_ids(data, "train"), m.eot_id)
    assert len(val) == len(train) == 4
    sizes = [len(b) for b in books]
    for book, v, t, share in zip(books, val, train, sizes):
        tail, head = tok.decode(v.tolist()), tok.decode(t.tolist())
        assert book.endswith(tail) and book.startswith(head)  # a tail and a head of the same book...
        assert len(head) + len(tail) <= len(book)  # ...that do not overlap
        # each book gives validation in proportion to its size (largest remainders of val_tokens)
        assert abs(len(v) + 1 - m.tokens["val"] * share / sum(sizes)) <= 1


def test_the_bpe_tokenizer_never_sees_validation_text(tiny_data):
    m, tok = load_manifest(tiny_data), load_tokenizer(tiny_data)
    cfg = DataConfig(val_tokens=m.settings["val_tokens"])
    texts, _ = bpe_training_texts(open_source(cfg), cfg.val_tokens, None, 1 << 18)
    seen = "".join(texts)
    assert len(seen) > 5_000_000
    for v in segments(split_ids(tiny_data, "val"), m.eot_id):
        tail = tok.decode(v.tolist())
        for i in range(0, len(tail) - 100, max(1, len(tail) // 10)):
            assert tail[i:i + 100] not in seen


def test_documents_mode_holds_out_the_first_documents(tmp_path, docs_jsonl):
    data = prepare(DataConfig(source=str(docs_jsonl), tokenizer="gpt2", dir=str(tmp_path / "d"), val_tokens=3000,
                              num_workers=1), progress=False)
    m, tok = load_manifest(data), load_tokenizer(data)
    docs = paragraphs(400)
    assert m.split_mode == "documents" and m.tokens["val"] == 3000
    val_text = tok.decode(split_ids(data, "val").tolist())
    n_val = m.documents["val"]
    assert val_text.startswith("<|endoftext|>".join(docs[: n_val - 1]))  # the first documents, in order
    train = [tok.decode(s.tolist()) for s in segments(split_ids(data, "train"), m.eot_id)]
    assert train == docs[n_val:]  # every later document, whole; the cut one is in neither split's remainder
    assert m.documents["train"] == 400 - n_val
    assert m.tokens["train"] == sum(len(tok.encode(d)) + 1 for d in docs[n_val:])


def test_max_tokens_in_documents_mode_is_exact(tmp_path, docs_jsonl):
    m = load_manifest(prepare(DataConfig(source=str(docs_jsonl), tokenizer="gpt2", dir=str(tmp_path / "d"),
                                         val_tokens=1000, num_workers=1), max_tokens=7000, progress=False))
    assert m.tokens == {"train": 6000, "val": 1000} and m.settings["max_tokens"] == 7000


def test_worker_processes_give_the_same_shards(tmp_path, docs_jsonl):
    cfg = DataConfig(source=str(docs_jsonl), tokenizer="gpt2", val_tokens=2000, shard_tokens=8000)
    one = prepare_data(dataclasses.replace(cfg, dir=str(tmp_path / "one"), num_workers=1), progress=False)
    two = prepare_data(dataclasses.replace(cfg, dir=str(tmp_path / "two"), num_workers=2), progress=False)
    assert (one.workers, two.workers) == (1, 2)
    assert shard_hashes(one.data_dir) == shard_hashes(two.data_dir)
    assert len(load_manifest(one.data_dir).shards) > 3


def test_rerun_is_a_no_op(gpt2_data):
    cfg = DataConfig(tokenizer="gpt2", dir=str(gpt2_data), val_tokens=4096, shard_tokens=10_000, num_workers=1)
    before = {p.name: p.stat().st_mtime_ns for p in gpt2_data.iterdir()}
    result = prepare_data(cfg, max_tokens=60_000, progress=False)
    assert not result.created
    # a training config need not repeat --max-tokens: the slice that is there is used
    assert not prepare_data(cfg, progress=False).created
    assert {p.name: p.stat().st_mtime_ns for p in gpt2_data.iterdir()} == before


@pytest.mark.parametrize("source,val_tokens", [("embedded", 3000), ("jsonl", 9000)])
def test_an_interrupted_prepare_resumes_to_the_same_shards(source, val_tokens, tmp_path, docs_jsonl, monkeypatch):
    src = "embedded" if source == "embedded" else str(docs_jsonl)
    cfg = DataConfig(source=src, tokenizer="gpt2", val_tokens=val_tokens, shard_tokens=4000, num_workers=1)
    whole = prepare(dataclasses.replace(cfg, dir=str(tmp_path / "whole")), max_tokens=40_000, progress=False)
    assert len(load_manifest(whole).shards_of("val")) == -(-val_tokens // 4000)

    interrupted = tmp_path / "interrupted"
    finish = shards_module.ShardWriter._finish
    calls = {"n": 0}

    def finish_then_die(self):
        finish(self)
        calls["n"] += self.split == "train"
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C right after the third training shard

    monkeypatch.setattr(shards_module.ShardWriter, "_finish", finish_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(dataclasses.replace(cfg, dir=str(interrupted)), max_tokens=40_000, progress=False)
    monkeypatch.undo()
    names = sorted(p.name for p in interrupted.iterdir())
    assert "manifest.json" not in names and not any(n.endswith(".tmp") for n in names)
    assert ".progress.json" in names
    # the checkpoint lists the shards completed up to the last finished document (a shard finished after it is
    # written again on resume)
    checkpointed = len(json.loads((interrupted / ".progress.json").read_text())["train_shards"])
    assert 1 <= checkpointed <= 3

    result = prepare_data(dataclasses.replace(cfg, dir=str(interrupted)), max_tokens=40_000, progress=False)
    assert result.created and result.resumed_shards == checkpointed
    assert shard_hashes(interrupted) == shard_hashes(whole)
    assert not (interrupted / ".progress.json").exists()


def test_other_settings_in_a_named_dir_are_refused_and_force_replaces(tmp_path, docs_jsonl):
    cfg = DataConfig(source=str(docs_jsonl), tokenizer="gpt2", dir=str(tmp_path / "d"), val_tokens=2000,
                     num_workers=1)
    prepare(cfg, progress=False)
    for change, message in [({"val_tokens": 1000}, "val_tokens=2000, not 1000"),
                            ({"source": "embedded"}, "source"), ({"max_tokens": 9000}, "max_tokens=None, not 9000")]:
        with pytest.raises(UserError, match=message):
            prepare(dataclasses.replace(cfg, **change), progress=False)
    replaced = prepare_data(dataclasses.replace(cfg, val_tokens=1000), progress=False, force=True)
    assert replaced.created and load_manifest(replaced.data_dir).tokens["val"] == 1000


def test_cache_dir_is_keyed_and_prepared_again_when_the_source_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_LM_CACHE", str(tmp_path / "cache"))
    corpus = write_jsonl(tmp_path / "c.jsonl", paragraphs(60))
    cfg = DataConfig(source=str(corpus), tokenizer="gpt2", val_tokens=500, num_workers=1)
    d = resolve_data_dir(cfg)
    assert d.parent == tmp_path / "cache" / "data" and d.name.startswith("c.jsonl-gpt2-")
    assert resolve_data_dir(dataclasses.replace(cfg, max_tokens=5000)) == d  # a slice is found again
    assert resolve_data_dir(dataclasses.replace(cfg, val_tokens=600)) != d
    assert resolve_data_dir(dataclasses.replace(cfg, tokenizer="bpe-512")) != d
    assert resolve_data_dir(dataclasses.replace(cfg, dir=str(tmp_path / "x"))) == tmp_path / "x"
    first = load_manifest(prepare(cfg, progress=False))
    write_jsonl(corpus, paragraphs(80))
    again = prepare_data(cfg, progress=False)
    assert again.created and again.manifest.tokens["train"] > first.tokens["train"]


def test_a_source_too_small_leaves_nothing_behind(tmp_path):
    corpus = write_jsonl(tmp_path / "small.jsonl", paragraphs(3))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"lower data\.val_tokens"):
        prepare(DataConfig(source=str(corpus), tokenizer="bpe-300", dir=str(out), val_tokens=50_000, num_workers=1),
                progress=False)
    assert not out.exists()


def test_shards_switch_to_uint32_for_large_vocabularies():
    from lowrank_lm.data.shards import shard_dtype

    assert (shard_dtype(50257), shard_dtype(65536), shard_dtype(65537), shard_dtype(128256)) == \
        ("uint16", "uint16", "uint32", "uint32")


def test_train_shards_have_the_fixed_size(gpt2_data):
    train = load_manifest(gpt2_data).shards_of("train")
    assert [s.tokens for s in train[:-1]] == [10_000] * (len(train) - 1) and 0 < train[-1].tokens <= 10_000
    assert np.array_equal(split_ids(gpt2_data, "train")[:3], np.fromfile(gpt2_data / train[0].path, np.uint16)[:3])


def test_package_exports_are_never_shadowed_by_submodules():
    import importlib
    import types

    import lowrank_lm.data as data

    for module in set(data._EXPORTS.values()):
        importlib.import_module(f"lowrank_lm.data.{module}")  # binds the submodule's name in the package
    assert sorted(data.__all__) == sorted(data._EXPORTS)
    assert not any(isinstance(getattr(data, name), types.ModuleType) for name in data.__all__)
    assert callable(data.prepare) and data.prepare.__module__ == "lowrank_lm.data.pipeline"


def test_prepare_in_a_worker_importing_the_main_script_is_one_line_not_a_deadlock(tmp_path, monkeypatch):
    # what a spawned encoder worker sees when the user's script calls prepare() at its top level: the flag
    # multiprocessing sets while the child imports the main script (it would wait forever on the parent's lock)
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    cfg = DataConfig(source="embedded", tokenizer="bpe-512", dir=str(tmp_path / "d"))
    with pytest.raises(UserError, match='if __name__ == "__main__"'):
        prepare(cfg, progress=False)
    assert not (tmp_path / "d").exists()  # refused before the folder or its lock were made
