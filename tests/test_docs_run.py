"""Docs that run: every ```python, ```bash and ```console block of README.md and docs/*.md.

A block runs unless the line before its fence says ``<!-- doc-test: skip (why) -->`` (it needs a GPU, the hub,
a cluster, a finished study or an hour); ``<!-- doc-test: needs MODULE (why) -->`` runs it where MODULE imports
(an optional extra) and skips it elsewhere. Running blocks execute offline on the CPU: Python through ``exec`` in a
folder that holds small runs under the names the docs use (``runs/demo/lowrank-32``, ``runs/tiny``), commands
through the ``lowrank-lm`` parser in this process, with the few overrides of :data:`SHRINK` added so that a
training command takes two steps instead of minutes. Skipped blocks are still checked: Python compiles, and
every ``lowrank-lm`` command names a verb and options that exist (scripts and make targets must exist too).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from lowrank_lm.cli import build_parser

from .ecosystem import cli, make_run, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?:<!-- doc-test: (?P<mark>[^\n]*?) -->\n)?```(?P<lang>python|bash|console)\n(?P<body>.*?)^```",
                   re.S | re.M)
# What a running block's commands get added, by verb: the tiny preset trains 2 steps of 4096 tokens and is
# evaluated on 4096 tokens, on a 200k-token slice of the embedded corpus (prepare and train must agree on it).
DATA = ["data.max_tokens=200000"]
SHRINK = {"prepare": DATA, "train": [*DATA, "train.tokens=8192", "train.eval_tokens=4096"],
          "eval": ["--tokens", "4096"]}
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", "2>", "<", "do", "done"}


@dataclass
class Block:
    """One fenced block: where it is, its language, its doc-test mark (None: it runs) and its text."""

    path: Path
    line: int
    lang: str
    mark: str | None
    body: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text[:m.start("lang")].count("\n") + 1
            found.append(Block(path, line, m.group("lang"), m.group("mark"), m.group("body")))
    return found


def commands(block: Block) -> list[str]:
    """The command lines of a shell block: continuations joined, console prompts stripped, output dropped."""
    text = re.sub(r"\\\n\s*", " ", block.body)
    lines = text.splitlines()
    if block.lang == "console":
        return [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def invocation(line: str) -> list[str] | None:
    """The arguments after ``lowrank-lm`` (or ``-m lowrank_lm``) on a command line, up to a shell operator."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote (a heredoc line): not a command of ours
        return None
    for i, word in enumerate(words):
        if Path(word).name == "lowrank-lm" or (word == "lowrank_lm" and i and words[i - 1] == "-m"):
            args = []
            for arg in words[i + 1:]:
                if arg in SHELL_OPERATORS or arg.endswith(";"):
                    break
                args.append(arg)
            return args
    return None


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def check_options(args: list[str]) -> list[str]:
    """What is wrong with ``lowrank-lm ARGS`` as far as names go: the verb (and sub-verb), every --option."""
    parser = build_parser()
    if not args or args[0] in ("--help", "--version"):
        return []
    verbs = _subparsers(parser)
    if args[0] not in verbs:
        return [f"unknown verb {args[0]!r}"]
    p, rest = verbs[args[0]], args[1:]
    inner = _subparsers(p)
    if inner:
        if not rest or rest[0] not in inner:
            return [f"{args[0]} needs one of {', '.join(inner)}, got {rest[:1]}"]
        p, rest = inner[rest[0]], rest[1:]
    known = {s for a in p._actions for s in a.option_strings}
    options = [w.strip("[]").split("=", 1)[0] for w in rest if w.strip("[]").startswith("--")]
    return [f"{args[0]} has no option {o}" for o in options if o not in known]


def check_other(line: str) -> list[str]:
    """A line that is not ours: a script it runs must exist (with the options it passes); make targets too."""
    words = shlex.split(line, comments=True) if line.count("'") % 2 == 0 and line.count('"') % 2 == 0 else []
    problems = []
    for i, word in enumerate(words):
        if word.startswith("scripts/"):
            script = ROOT / word
            if not script.is_file():
                problems.append(f"no {word}")
            elif script.suffix == ".py":
                source = script.read_text()
                problems += [f"{word} has no option {w}" for w in words[i + 1:]
                             if w.startswith("--") and f'"{w.split("=")[0]}"' not in source]
    if words[:1] == ["make"]:
        makefile = (ROOT / "Makefile").read_text()
        problems += [f"no make target {t}" for t in words[1:] if not re.search(rf"^{re.escape(t)}:", makefile, re.M)]
    return problems


BLOCKS = blocks()


def test_the_docs_have_the_blocks_this_test_reads():
    langs = {b.lang for b in BLOCKS}
    assert langs == {"python", "bash", "console"} and len(BLOCKS) >= 25
    running = [b.body for b in BLOCKS if b.mark is None]
    for what in ("lowrank-lm info", "lowrank-lm train configs/cpu/tiny.yaml", "lowrank-lm eval runs/tiny",
                 "lowrank_lm.load(", "lowrank_lm.build("):
        assert sum(what in body for body in running) >= 1, f"no running block has {what}"
    assert all(b.mark.startswith(("skip (", "needs ")) and b.mark.endswith(")") for b in BLOCKS if b.mark), \
        "a doc-test mark is 'skip (the reason)' or 'needs MODULE (the reason)'"


def test_the_option_checker_catches_what_it_should():
    assert check_options(["train", "configs/cpu/tiny.yaml", "--max-steps", "3"]) == []
    assert check_options(["trian"]) == ["unknown verb 'trian'"]
    assert check_options(["sweep", "X.yaml", "[--dry-run]", "--no-such=1"]) == ["sweep has no option --no-such"]
    assert check_options(["bench", "ffn", "--widths", "8"]) == []
    assert check_options(["bench", "--widths", "8"])[0].startswith("bench needs one of ffn, train, decode")
    assert invocation('CUDA_VISIBLE_DEVICES=$i lowrank-lm sweep a.yaml --shard $i/8 --quiet &') == \
        ["sweep", "a.yaml", "--shard", "$i/8", "--quiet"]
    assert invocation("torchrun --nproc_per_node 8 -m lowrank_lm train c.yaml  # comment") == ["train", "c.yaml"]


def needs(block: Block) -> str | None:
    """The module a ``needs MODULE`` block runs with, else None."""
    return block.mark.split()[1] if block.mark and block.mark.startswith("needs ") else None


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.mark and not needs(b)], ids=lambda b: b.name)
def test_skipped_blocks_are_well_formed(block):
    if block.lang == "python":
        compile(block.body, block.name, "exec")
        return
    problems = []
    for line in commands(block):
        args = invocation(line)
        problems += check_options(args) if args is not None else check_other(line)
    assert not problems, f"{block.name}: {problems}"


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """A private data cache (LOWRANK_LM_CACHE) that the blocks which prepare data share."""
    return tmp_path_factory.mktemp("docs-cache")


@pytest.fixture
def workdir(tmp_path):
    """An empty folder with the repository's configs/ and examples/ (the docs' relative paths)."""
    for name in ("configs", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def make_snippet_runs(root: Path) -> None:
    """Small runs with a tokenizer under the names the Python snippets load."""
    tok = make_tokenizer(root / "tok" / "tokenizer.json")
    make_run(root / "runs" / "demo" / "lowrank-32", ["model.ffn.kind=lowrank", "model.ffn.rank=16"], tok)
    make_run(root / "runs" / "tiny", [], tok, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.mark is None or needs(b)], ids=lambda b: b.name)
def test_running_blocks_run(block, workdir, data_cache, monkeypatch, capsys):
    if needs(block):
        pytest.importorskip(needs(block), reason=f"{block.name}: {block.mark}")
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("LOWRANK_LM_CACHE", str(data_cache))
    if block.lang == "python":
        make_snippet_runs(workdir)
        exec(compile(block.body, block.name, "exec"), {"__name__": "__doc_snippet__"})
        assert capsys.readouterr().out.strip(), f"{block.name} printed nothing"
        return
    for line in commands(block):
        args = invocation(line)
        assert args is not None, f"{block.name}: {line!r} is not a lowrank-lm command; mark the block skip"
        extra = SHRINK.get(args[0], [])
        code, out, err = cli(*args, *extra)
        assert code == 0, f"{block.name}: lowrank-lm {' '.join(args)} {' '.join(extra)} -> {code}\n{err[-2000:]}"
        assert (out + err).strip(), f"{block.name}: lowrank-lm {' '.join(args)} printed nothing"
    assert os.getcwd() == str(workdir)


def test_scale_2_is_tiny_but_for_its_out_dir():
    # configs/cpu/scale-2.yaml and the docs say so; this keeps it true
    from lowrank_lm.config import config_to_dict
    from lowrank_lm.resolve import load_config

    tiny = config_to_dict(load_config(ROOT / "configs/cpu/tiny.yaml"))
    scale_2 = config_to_dict(load_config(ROOT / "configs/cpu/scale-2.yaml"))
    assert (tiny["train"].pop("out_dir"), scale_2["train"].pop("out_dir")) == ("runs/tiny", "runs/cpu-scale-2")
    assert tiny == scale_2
