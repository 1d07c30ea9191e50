"""lm-evaluation-harness through the ``lm-eval`` verb, offline, on a multiple-choice task defined here.

The accuracy lm-eval reports must equal the accuracy computed directly from our model's
log-likelihoods, one unbatched forward pass per choice.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lowrank_lm.api import load
from lowrank_lm.cli import main

from .ecosystem import WORDS, make_run, make_tokenizer, sentences

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's JSONL is local; never reach for a hub

TASK = "lowrank_toy_mc"
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(folder: Path, n: int = 24) -> list[dict]:
    rng = random.Random(3)
    docs = []
    for i in range(n):
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(3)]
        docs.append({"question": sentences(1, seed=100 + i)[0], "choices": choices, "label": rng.randrange(3)})
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "toy.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data))
    return docs


@torch.no_grad()
def direct_accuracy(model, tok, docs: list[dict]) -> float:
    """lm-eval's multiple-choice rule, by hand: argmax over choices of log p(" " + choice | question)."""
    hits = 0
    for d in docs:
        context = f"Question: {d['question']}\nAnswer:"
        scores = []
        for choice in d["choices"]:
            # a causal LM scores the continuation's share of the whole text's tokens
            ctx = tok.encode(context)
            cont = tok.encode(context + " " + choice)[len(ctx):]
            logp = F.log_softmax(model(torch.tensor([ctx + cont]))[0].float(), dim=-1)
            scores.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == d["label"])
    return hits / len(docs)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lmeval")
    tok = make_tokenizer(root / "tok" / "tokenizer.json")
    make_run(root / "run", ["model.seq_len=64", "model.ffn.kind=lowrank", "model.ffn.rank=16"], tok)
    return root / "run"


def test_lm_eval_accuracy_equals_our_log_likelihoods(run_dir, tmp_path):
    docs = write_task(tmp_path / "tasks")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["lm-eval", str(run_dir), "--tasks", TASK, "--batch-size", "5", "--device", "cpu",
              "--include-path", str(tmp_path / "tasks"), "--no-builtin-tasks"])
    assert exit_.value.code == 0, err.getvalue()[-2000:]
    # beside the checkpoints, not inside one (rotation deletes old checkpoints)
    assert not list((run_dir / "checkpoints").glob("step-*/lm_eval_*.json"))
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1].name
    saved = sorted((run_dir / "lm_eval").glob("*.json"))
    assert [p.name for p in saved] == [f"{newest}_{TASK}.json"]
    record = json.loads(saved[0].read_text())
    acc = record["results"][TASK]["acc,none"]
    model = load(run_dir)
    expected = direct_accuracy(model, model.tokenizer, docs)
    assert acc == pytest.approx(expected, abs=1e-12)
    assert record["n-samples"][TASK]["effective"] == len(docs)
    assert f"{TASK}: acc {acc:.4f}" in out.getvalue()


def test_rolling_log_likelihood_and_generate_until_match_our_model(run_dir):
    from lowrank_lm.export.lm_eval_adapter import LowRankLM

    model = load(run_dir)
    tok = model.tokenizer
    lm = LowRankLM(model, tok, batch_size=2)
    eot = tok.eot_id

    text = " ".join(sentences(3, seed=9))
    ids = tok.encode(text)
    assert len(ids) < model.cfg.seq_len  # one window: log p(text | <|endoftext|>) from one forward pass
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([[eot, *ids[:-1]]]))[0], dim=-1)
    direct = sum(float(logp[i, t]) for i, t in enumerate(ids))
    (rolled,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    assert rolled == pytest.approx(direct, rel=1e-5)

    prompt = "the cat sat on"
    p_ids = tok.encode(prompt)
    greedy = model.generate(torch.tensor([p_ids]), 12, temperature=0)[0, len(p_ids):].tolist()
    if eot in greedy:
        greedy = greedy[:greedy.index(eot)]
    full = tok.decode(p_ids + greedy)[len(prompt):]
    assert len(full) > 6
    stop = full[4:6]
    (plain, cut) = lm.generate_until([
        SimpleNamespace(args=(prompt, {"until": [], "max_gen_toks": 12})),
        SimpleNamespace(args=(prompt, {"until": [stop], "max_gen_toks": 12})),
    ])
    assert plain == full
    assert cut == full[:full.index(stop)]


def test_unknown_task_is_one_line(run_dir, tmp_path, capsys):
    write_task(tmp_path / "tasks", n=2)
    with pytest.raises(SystemExit) as exit_:
        main(["lm-eval", str(run_dir), "--tasks", "lowrank_toy_mx", "--include-path", str(tmp_path / "tasks"),
              "--no-builtin-tasks"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "unknown lm-eval task 'lowrank_toy_mx' (did you mean lowrank_toy_mc?)" in err
    assert err.count("\n") == 1


HUB_TASK_YAML = """\
task: lowrank_hub_task
dataset_path: lowrank-lm-tests/no-such-dataset
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{c}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


def test_a_hub_task_without_network_is_one_line_exit_2(run_dir, tmp_path, capsys, monkeypatch):
    from lowrank_lm.export import hub_access

    monkeypatch.setattr(hub_access, "hub_reachable", lambda timeout=3.0: False)  # whatever this machine has
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub.yaml").write_text(HUB_TASK_YAML)
    with pytest.raises(SystemExit) as exit_:
        main(["lm-eval", str(run_dir), "--tasks", "lowrank_hub_task", "--include-path", str(tmp_path / "tasks"),
              "--no-builtin-tasks"])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    assert "lowrank-lm lm-eval: error: the data of --tasks lowrank_hub_task is not in the local cache" in captured.err
    assert "--include-path examples/lm-eval --no-builtin-tasks --tasks lowrank_lm_tiny_cloze" in captured.err
    assert captured.err.count("\n") == 1
    assert not (run_dir / "lm_eval" / "lowrank_hub_task.json").exists()


def test_the_shipped_offline_example_task_runs(run_dir, tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the example's data path is relative to the repository root
    out = tmp_path / "cloze.json"
    code = None
    with contextlib.redirect_stdout(io.StringIO()) as printed, pytest.raises(SystemExit) as exit_:
        main(["lm-eval", str(run_dir), "--include-path", "examples/lm-eval", "--no-builtin-tasks",
              "--tasks", "lowrank_lm_tiny_cloze", "--output", str(out), "--device", "cpu"])
    code = exit_.value.code
    assert code == 0
    record = json.loads(out.read_text())
    assert record["n-samples"]["lowrank_lm_tiny_cloze"]["effective"] == 24
    assert 0.0 <= record["results"]["lowrank_lm_tiny_cloze"]["acc,none"] <= 1.0
    assert "lowrank_lm_tiny_cloze: acc " in printed.getvalue()
