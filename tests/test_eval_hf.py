"""`lowrank-lm eval` on a structurized transformers folder: perplexity on prepared data, in the model's tokenizer."""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lowrank_lm import load_structurized, structurize  # noqa: E402
from lowrank_lm.cli import main  # noqa: E402
from lowrank_lm.data import load_manifest  # noqa: E402
from lowrank_lm.data.tokenizer import load_tokenizer  # noqa: E402

SEQ = 16


def _folder(tiny_data, out, tokenizer=True):
    """A tiny Llama over the data's 512 ids, its FFNs low-rank, saved with the data's tokenizer (or none)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(config)
    structurize(model, "lowrank", rank=8, targets="ffn", init="from_dense")
    model.save_pretrained(str(out))
    if tokenizer:
        load_tokenizer(tiny_data).to_transformers(64).save_pretrained(str(out))
    return out


def _direct_ppl(folder, data, tokens):
    """exp of the mean next-token loss over the first ``tokens // SEQ`` validation rows, read from the shard
    file and scored with log_softmax of the loaded model's logits (not the command's code path)."""
    import numpy as np

    manifest = load_manifest(data)
    shard = next(s for s in manifest.shards if s.split == "val")
    ids = np.fromfile(data / shard.path, dtype=manifest.dtype).astype(np.int64)
    rows = torch.from_numpy(ids[:(tokens // SEQ) * SEQ + 1])
    model = load_structurized(folder)
    total = 0.0
    with torch.no_grad():
        for i in range(tokens // SEQ):
            x = rows[i * SEQ:(i + 1) * SEQ + 1]
            logp = torch.log_softmax(model(input_ids=x[None, :-1]).logits[0].double(), -1)
            total -= float(logp.gather(-1, x[1:, None]).sum())
    return math.exp(total / ((tokens // SEQ) * SEQ))


def test_eval_of_a_structurized_folder_is_the_perplexity_of_its_logits(tiny_data, tmp_path, capsys):
    folder = _folder(tiny_data, tmp_path / "hf")
    assert len(load_manifest(tiny_data).shards_of("val")) == 1  # _direct_ppl reads the one val shard
    with pytest.raises(SystemExit) as code:
        main(["eval", str(folder), "--data", str(tiny_data), "--seq-len", str(SEQ), "--tokens", "160", "--json",
              "--batch-size", "3", "--device", "cpu"])
    assert code.value.code == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["tokens"] == 160 and res["seq_len"] == SEQ
    assert res["ppl"] == pytest.approx(_direct_ppl(folder, tiny_data, 160), rel=1e-4)
    assert 200 < res["ppl"] < 2000  # an untrained model over 512 ids: near uniform


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as code:
        main(argv)
    err = capsys.readouterr().err
    assert code.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_eval_refuses_data_of_another_tokenizer_and_flags_that_do_not_apply(tiny_data, tmp_path, capsys):
    from lowrank_lm.data.tokenizer import _fast_tokenizer, train_bpe

    folder = _folder(tiny_data, tmp_path / "hf", tokenizer=False)
    other = _fast_tokenizer(train_bpe(["a b c d e f g aa bb cc ab ba"] * 20, 300), "<|endoftext|>", None, 64)
    other.save_pretrained(str(folder))
    err = _fails(["eval", str(folder), "--data", str(tiny_data), "--seq-len", str(SEQ)], capsys)
    assert "not with" in err and "own tokenizer" in err
    assert "give --data" in _fails(["eval", str(folder)], capsys)
    assert "--seq-len 65" in _fails(["eval", str(_folder(tiny_data, tmp_path / "ok")), "--data", str(tiny_data),
                                     "--seq-len", "65"], capsys)


def test_lm_eval_of_a_structurized_folder_equals_its_log_likelihoods(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import contextlib
    import io

    from lowrank_lm.data.tokenizer import HFTokenizer

    from .ecosystem import TOKENIZER_VOCAB, make_tokenizer
    from .test_lm_eval import TASK, direct_accuracy, write_task

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the task's JSONL is local
    tok = HFTokenizer(make_tokenizer(tmp_path / "tok" / "tokenizer.json"), "toy")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=TOKENIZER_VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(config)
    structurize(model, "lowrank", rank=8, targets="ffn", init="from_dense")
    folder = tmp_path / "hf"
    model.save_pretrained(str(folder))
    tok.to_transformers(64).save_pretrained(str(folder))
    docs = write_task(tmp_path / "tasks")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as code:
        main(["lm-eval", str(folder), "--tasks", TASK, "--batch-size", "5", "--device", "cpu",
              "--include-path", str(tmp_path / "tasks"), "--no-builtin-tasks"])
    assert code.value.code == 0, err.getvalue()[-2000:]
    record = json.loads((folder / f"lm_eval_{TASK}.json").read_text())
    loaded = load_structurized(folder)
    expected = direct_accuracy(lambda x: loaded(input_ids=x).logits, tok, docs)
    assert record["results"][TASK]["acc,none"] == pytest.approx(expected, abs=1e-12)
    assert record["n-samples"][TASK]["effective"] == len(docs) and record["checkpoint"] == str(folder)
