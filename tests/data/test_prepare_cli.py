"""`lowrank-lm prepare`: the defaults on the embedded books, the no-op re-run, --json, and each damaged or
mismatched data dir giving one clear line with exit code 2 and leaving the files as they were."""

from __future__ import annotations

import json
import shutil

import pytest

from lowrank_lm.cli import main
from lowrank_lm.data import load_manifest

# the settings tiny_data (tests/conftest.py) was prepared with
TINY = ["data.tokenizer=bpe-512", "data.val_tokens=8192"]


def run_cli(capsys, *argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_defaults_prepare_the_embedded_books_with_bpe_8192(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_LM_CACHE", str(tmp_path / "cache"))
    code, out, _ = run_cli(capsys, "prepare", "--quiet")
    assert code == 0 and out.startswith("prepared ") and "train + 65,536 val tokens, bpe-8192 (vocab 8,192)" in out
    (data_dir,) = (tmp_path / "cache" / "data").iterdir()
    m = load_manifest(data_dir)
    total = m.tokens["train"] + m.tokens["val"]
    assert 1_550_000 < total < 1_700_000 and m.tokens["val"] == 65_536  # "about 1.6 M tokens"
    assert (m.vocab_size, m.dtype, m.tokenizer, m.documents) == (8192, "uint16", "bpe-8192", {"train": 4, "val": 4})
    code, out, _ = run_cli(capsys, "prepare", "--quiet")
    assert code == 0 and out.startswith(f"already prepared, nothing to do: {data_dir}")


def test_overrides_without_a_config_and_json(capsys, tmp_path, docs_jsonl):
    code, out, _ = run_cli(capsys, "prepare", f"data.source={docs_jsonl}", "data.tokenizer=gpt2",
                           f"data.dir={tmp_path / 'd'}", "data.val_tokens=1000", "--max-tokens", "9000", "--quiet",
                           "--json", "--verify")
    assert code == 0
    info = json.loads(out)
    assert info["created"] and info["verified"] and info["tokens"] == {"train": 8000, "val": 1000}
    assert info["vocab_size"] == 50257 and info["dtype"] == "uint16"


def _copy(tiny_data, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst


def _flip_byte(d):
    shard = d / load_manifest(d).shards_of("train")[0].path
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0x10
    shard.write_bytes(bytes(raw))


def _truncate(d):
    shard = d / load_manifest(d).shards_of("train")[0].path
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 2)


def _other_manifest(d):
    m = json.loads((d / "manifest.json").read_text())
    m["tokenizer_files"]["tokenizer.json"] = "0" * 64  # the manifest of another preparation
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage,extra,message", [
    (_flip_byte, ["--verify"], "fails its sha256 check (the file is corrupted); delete"),
    (_truncate, [], "(truncated or overwritten); delete"),
    (None, ["data.tokenizer=gpt2"], "holds data prepared with tokenizer bpe-512, not gpt2; use another data.dir"),
    (_other_manifest, ["--verify"], "are not those of its manifest (bpe-512)"),
    (None, ["model.vocab_size=97"], "bpe-512 has 512 ids but model.vocab_size=97; set model.vocab_size=512"),
])
def test_damaged_or_mismatched_data_is_one_line_and_exit_2(capsys, tmp_path, tiny_data, damage, extra, message):
    d = _copy(tiny_data, tmp_path)
    if damage is not None:
        damage(d)
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()}
    code, out, err = run_cli(capsys, "prepare", f"data.dir={d}", *TINY, *extra, "--quiet")
    assert code == 2, err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()} == before


def test_a_config_whose_model_is_too_small_is_refused_before_any_work(capsys, tmp_path):
    out_dir = tmp_path / "never"
    code, _, err = run_cli(capsys, "prepare", "configs/cpu/tiny.yaml", "data.tokenizer=gpt2", f"data.dir={out_dir}")
    assert code == 2 and "data.tokenizer=gpt2 has 50,257 ids but model.vocab_size=8,192" in err
    assert not out_dir.exists()
