"""Local .txt, .jsonl and .parquet sources go through the same path as the embedded books; bad sources and an
unreachable hub end in one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lowrank_lm.config import DataConfig
from lowrank_lm.data import load_manifest, prepare
from lowrank_lm.data.embedded import embedded_books
from lowrank_lm.data.sources import open_source
from lowrank_lm.errors import UserError

from .conftest import paragraphs, write_jsonl


def shard_hashes(data_dir):
    return [(s.path, s.tokens, s.sha256) for s in load_manifest(data_dir).shards]


def test_txt_files_of_the_books_give_the_embedded_shards(tmp_path, gpt2_data):
    books = tmp_path / "books"
    books.mkdir()
    for i, book in enumerate(embedded_books()):
        (books / f"{i}.txt").write_text(book.text)
    data = prepare(DataConfig(source=str(books), tokenizer="gpt2", dir=str(tmp_path / "d"), val_tokens=4096,
                              shard_tokens=10_000, num_workers=1), max_tokens=60_000, progress=False)
    m = load_manifest(data)
    assert m.split_mode == "tail" and m.source_identity["kind"] == "txt" and len(m.source_identity["files"]) == 4
    assert shard_hashes(data) == shard_hashes(gpt2_data)  # one code path: only the source differs


def test_jsonl_and_parquet_of_the_same_rows_give_the_same_shards(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # local files need no hub
    texts = paragraphs(120)
    write_jsonl(tmp_path / "rows.jsonl", texts, field="body")
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"id": list(range(60)), "body": texts[:60]}), tmp_path / "pq" / "a.parquet")
    pq.write_table(pa.table({"id": list(range(60, 120)), "body": texts[60:]}), tmp_path / "pq" / "b.parquet")
    made = {}
    for name, source in [("jsonl", tmp_path / "rows.jsonl"), ("parquet", tmp_path / "pq" / "*.parquet")]:
        made[name] = prepare(DataConfig(source=str(source), tokenizer="gpt2", dir=str(tmp_path / name),
                                        text_field="body", val_tokens=1500, num_workers=1), progress=False)
    assert load_manifest(made["parquet"]).source_identity["kind"] == "parquet"
    assert shard_hashes(made["jsonl"]) == shard_hashes(made["parquet"])
    assert load_manifest(made["jsonl"]).documents["train"] + load_manifest(made["jsonl"]).documents["val"] == 120


def test_a_glob_reads_files_in_sorted_order(tmp_path):
    texts = paragraphs(6)
    write_jsonl(tmp_path / "b.jsonl", texts[3:])
    write_jsonl(tmp_path / "a.jsonl", texts[:3])
    (tmp_path / "notes.md").write_text("ignored")
    src = open_source(DataConfig(source=str(tmp_path / "*.jsonl")))
    assert [d.text for d in src.documents()] == texts
    assert [d.text for d in src.documents(skip=4)] == texts[4:]
    assert [d.text for d in open_source(DataConfig(source=str(tmp_path))).documents()] == texts


@pytest.mark.parametrize("setup,source,message", [
    (lambda p: write_jsonl(p / "x.jsonl", ["a"], field="body"), "x.jsonl", r"x\.jsonl:1 has no field 'text' \(it has: "
                                                                         r"body, id\); set data\.text_field"),
    (lambda p: (p / "x.jsonl").write_text('{"text": "a"}\nnot json\n'), "x.jsonl", r"x\.jsonl:2 is not valid JSON"),
    (lambda p: (p / "x.txt").write_bytes(b"caf\xe9"), "x.txt", "is not UTF-8 text"),
    (lambda p: (p / "x.csv").write_text("a,b"), "x.csv", "unsupported file type .csv"),
    (lambda p: [(p / "a.txt").write_text("a"), write_jsonl(p / "b.jsonl", ["b"])], ".", "mixes .jsonl, .txt"),
    (lambda p: None, "nothing-here", "no such file or directory"),
    (lambda p: (p / "e.txt").write_text(""), "e.txt", "the file is empty"),
])
def test_bad_local_sources(tmp_path, setup, source, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message) as e:
        src = open_source(DataConfig(source=str(tmp_path / source)))
        list(src.documents())
    assert "\n" not in str(e.value)


def _cli(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "lowrank_lm", "prepare", *args, "--quiet"], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_hub_source_offline_is_one_clear_line(tmp_path):
    pytest.importorskip("datasets")
    out = tmp_path / "d"
    # a fresh process, as a user runs it: datasets reads HF_DATASETS_OFFLINE when it is imported
    proc = _cli(tmp_path, "data.source=hf:tiiuae/falcon-refinedweb", "data.tokenizer=gpt2", f"data.dir={out}",
                "--max-tokens", "100000", env={"HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("lowrank-lm prepare: error: cannot reach the Hugging Face hub to stream "
                                  "tiiuae/falcon-refinedweb; offline mode is on")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not out.exists()


def test_hub_source_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(UserError, match=r"needs the optional datasets package; install it with "
                                        r"pip install 'lowrank-lm\[hf\]'"):
        prepare(DataConfig(source="hf:HuggingFaceFW/fineweb", hf_config="sample-10BT", tokenizer="gpt2",
                           dir=str(tmp_path / "d")), max_tokens=100_000, progress=False)
    assert not (tmp_path / "d").exists()


def test_known_hub_text_fields():
    def field(name):
        return open_source(DataConfig(source=f"hf:{name}")).identity()["text_field"]

    assert field("tiiuae/falcon-refinedweb") == "content" and field("HuggingFaceFW/fineweb") == "text"
    assert json.dumps(open_source(DataConfig(source="hf:x/y", text_field="body", hf_config="c")).identity()) == \
        '{"kind": "hf", "name": "x/y", "config": "c", "text_field": "body"}'
