"""Discoverability: every option has help, --help shows defaults and examples, a mistyped verb gets a
suggestion, and docs/config.md is the reference `lowrank-lm config --markdown` prints."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from lowrank_lm.cli import VERBS, build_parser, main
from lowrank_lm.config_reference import reference_markdown, sections, undocumented

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_of_every_verb_has_help_text():
    missing = [f"{' '.join(path)} {a.option_strings or a.dest}" for path, p in _parsers(build_parser())
               for a in p._actions if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_help_shows_examples(verb, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help to the terminal width
    module = importlib.import_module(f"lowrank_lm.commands.{VERBS[verb]}")
    assert module.EXAMPLES, f"{verb} has no examples"
    code, out, _ = run_cli(capsys, verb, "--help")
    assert code == 0
    assert "examples:\n" in out
    assert all(f"  {line}" in out for line in module.EXAMPLES)


def test_help_shows_defaults_and_keeps_percent_signs(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help to the terminal width
    _, out, _ = run_cli(capsys, "eval", "--help")
    assert "sequences per forward pass (default: 8)" in out
    _, out, _ = run_cli(capsys, "demo", "--help")
    assert "LowRank-32% twin" in out and "%%" not in out
    assert "(default: runs/demo)" in out
    _, out, _ = run_cli(capsys, "bench", "decode", "--help")
    assert "(default: [1, 8, 32])" in out


@pytest.mark.parametrize("argv,message", [
    (["trian", "configs/cpu/tiny.yaml"], "lowrank-lm: error: unknown verb 'trian'; did you mean train?"),
    (["lm_eval"], "unknown verb 'lm_eval'; did you mean lm-eval?"),
    (["xyzzy"], "unknown verb 'xyzzy'; choose one of info, bench, prepare"),
])
def test_a_mistyped_verb_gets_a_suggestion_in_one_line(argv, message, capsys):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_every_config_key_is_documented_and_docs_config_md_is_the_generated_reference():
    assert undocumented() == []
    keys = {k.name for s in sections() for k in s.keys}
    for key in ("train.checkpoint_interval", "train.warmup_ratio", "train.min_lr_ratio", "train.eval_tokens",
                "train.log_interval", "model.init_std", "model.ffn.init", "train.self_guided.ratio"):
        assert key in keys
    assert (ROOT / "docs/config.md").read_text() == reference_markdown(), \
        "docs/config.md is stale: regenerate it with `lowrank-lm config --markdown > docs/config.md`"
    assert "(docs/config.md)" in (ROOT / "README.md").read_text()


def test_config_verb_prints_the_reference(capsys):
    code, out, _ = run_cli(capsys, "config")
    assert code == 0
    assert "  train.warmup_ratio = 0.1   (float)\n      Linear warmup over this fraction of the run's steps." in out
    code, out, _ = run_cli(capsys, "config", "--markdown")
    assert out == reference_markdown()
    assert ("| `model.ffn.rank` | int or empty | `empty` | The rank R of the kinds that read it (a bottleneck size, "
            "or a tensor-train rank: each structure says). |") in out


@pytest.mark.parametrize("tokens,shown", [("200000", "196.6k tokens = 48 steps x 4096"),
                                          ("2000000", "1.999M tokens = 488 steps x 4096"),
                                          ("2.2e9", "2.2B tokens = 537109 steps x 4096")])
def test_info_prints_the_token_budget_in_a_unit_that_fits(tokens, shown, capsys):
    code, out, _ = run_cli(capsys, "info", "configs/cpu/tiny.yaml", f"train.tokens={tokens}")
    assert code == 0 and "token budget" in out and shown in out


def test_the_verb_list_of_help_gives_each_verbs_first_paragraph_whole(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per verb, so each summary can be read back whole
    _, out, _ = run_cli(capsys, "--help")
    for verb, module_name in VERBS.items():
        doc = importlib.import_module(f"lowrank_lm.commands.{module_name}").__doc__
        first = " ".join(doc.strip().split("\n\n")[0].split())
        assert first.endswith((".", ")")), f"{verb}: the first paragraph of its docstring is not a sentence"
        assert f" {verb} " in out and first in " ".join(out.split()), f"{verb}'s summary is cut in --help"
    assert "print the same numbers as one process." in " ".join(out.split())  # eval's, cut before this fix


def test_bench_without_what_to_measure_says_so_in_one_line(capsys):
    code, out, err = run_cli(capsys, "bench")
    assert code == 2 and out == ""
    assert err == ("lowrank-lm bench: error: say what to measure: lowrank-lm bench ffn (FFN latency), bench train "
                   "CONFIG (training steps) or bench decode CONFIG (generation)\n")


def test_config_verb_prints_the_resolved_config_that_reloads_to_the_same_config(capsys, tmp_path):
    import yaml

    from lowrank_lm.config import config_to_dict
    from lowrank_lm.resolve import load_config

    code, out, _ = run_cli(capsys, "config", "configs/cpu/tiny.yaml", "model.ffn.kind=lowrank",
                           "model.ffn.fraction=0.32")
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed["model"]["ffn"]["kind"] == "lowrank" and printed["model"]["ffn"]["fraction"] is None
    assert printed["model"]["ffn"]["rank"] == 32  # the fraction is resolved to the rank it solves to
    assert printed["train"]["out_dir"] == "runs/tiny" and printed["model"]["hidden_dim"] == 128  # tiny's own values
    (tmp_path / "resolved.yaml").write_text(out)
    assert config_to_dict(load_config(tmp_path / "resolved.yaml")) == printed
    code, _, err = run_cli(capsys, "config", "configs/cpu/tiny.yaml", "--markdown")
    assert code == 2 and "--markdown prints the reference; it does not apply with CONFIG" in err
    code, _, err = run_cli(capsys, "config", "configs/cpu/tiny.yaml", "model.ffn.rnak=3")
    assert code == 2 and err.count("\n") == 1 and "rank" in err
