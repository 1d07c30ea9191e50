"""Commands that replace their own output files refuse, in one line and before any work, a file of the same
name that they did not write (bench --out, lm-eval --output); earlier output of their own is replaced."""

from __future__ import annotations

import json

import pytest

from .ecosystem import cli


@pytest.mark.parametrize("name,content,message", [
    ("ffn.md", "# my notes\n", "ffn.md was not written by bench (no ffn.json beside it)"),
    ("ffn.json", '{"mine": 1}', "ffn.json is not a bench result, and bench would replace it"),
    ("ffn.json", "not json", "ffn.json is not a bench result"),
])
def test_bench_refuses_to_replace_files_it_did_not_write(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    code, out, err = cli("bench", "ffn", "--widths", "64", "--out", str(tmp_path))
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1
    assert (tmp_path / name).read_text() == content


def test_bench_replaces_its_own_results(tmp_path):
    argv = ["bench", "ffn", "--widths", "64", "--kinds", "dense,lowrank", "--fractions", "0.5", "--tokens", "32",
            "--rounds", "1", "--min-round-s", "0.001", "--out", str(tmp_path)]
    assert cli(*argv)[0] == 0
    assert cli(*argv)[0] == 0  # the second run replaces the first one's ffn.json / ffn.md
    assert set(json.loads((tmp_path / "ffn.json").read_text())) == {"meta", "rows"}


def test_lm_eval_refuses_an_output_file_it_did_not_write(tmp_path):
    pytest.importorskip("lm_eval")
    target = tmp_path / "results.json"
    target.write_text('{"my": "data"}')
    code, _, err = cli("lm-eval", str(tmp_path / "no-run"), "--tasks", "x", "--output", str(target))
    assert code == 2 and f"--output {target} exists and is not an lm-eval record" in err
    assert target.read_text() == '{"my": "data"}'


def test_prepare_force_replaces_only_what_prepare_wrote(tmp_path):
    from .ecosystem import sentences

    source = tmp_path / "text.txt"
    source.write_text("\n\n".join(" ".join(sentences(12, seed=i)) for i in range(40)))
    data = tmp_path / "data"
    common = [f"data.source={source}", "data.tokenizer=bpe-300", f"data.dir={data}", "data.num_workers=1"]
    assert cli("prepare", *common, "data.val_tokens=400", "--quiet")[0] == 0
    (data / "notes.txt").write_text("mine")
    code, _, err = cli("prepare", *common, "data.val_tokens=300", "--quiet")
    assert code == 2 and "--force" in err  # other settings in a prepared folder: refused without --force
    assert cli("prepare", *common, "data.val_tokens=300", "--quiet", "--force")[0] == 0
    assert json.loads((data / "manifest.json").read_text())["tokens"]["val"] == 300
    assert (data / "notes.txt").read_text() == "mine"
