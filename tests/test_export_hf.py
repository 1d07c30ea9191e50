"""Hugging Face export: transformers computes our logits and our greedy tokens from the exported folder.

Each case is exported once (through the CLI, in-process) and loaded with
``AutoModelForCausalLM.from_pretrained``; the stock classes run transformers' own code, the
structured models the trust_remote_code files written by the exporter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lowrank_lm.decoding import generate

from .ecosystem import MODEL_VOCAB, cli, make_run, make_tokenizer, relative_error, sentences

transformers = pytest.importorskip("transformers")

GPT: list[str] = []  # the paper's defaults: LayerNorm, GELU-tanh, biases, tied embeddings, RoPE
LLAMA = ["model.norm=rmsnorm", "model.activation=swiglu", "model.bias=false", "model.tie_embeddings=false",
         "model.num_kv_heads=2", "model.rope_base=500000"]
LOWRANK = ["model.ffn.kind=lowrank", "model.ffn.rank=16"]

# name -> (overrides, --merge, class that must load it)
CASES = {
    "gpt-dense": ([*GPT, "model.rope_base=5000"], False, "GPTNeoXForCausalLM"),
    "gpt-gqa-narrow-attn": (["model.num_kv_heads=2", "model.attn_dim=32"], False, "Starcoder2ForCausalLM"),
    "gpt-no-bias-untied": (["model.bias=false", "model.tie_embeddings=false"], False, "GPTNeoXForCausalLM"),
    "llama-gqa": (LLAMA, False, "LlamaForCausalLM"),
    "llama-bias-tied": (["model.norm=rmsnorm", "model.activation=swiglu", "model.num_kv_heads=1"], False,
                        "LlamaForCausalLM"),
    "lowrank-merged": (LOWRANK, True, "GPTNeoXForCausalLM"),
    "lowrank-remote": (LOWRANK, False, "LowRankLMForCausalLM"),
    "lowrank-llama-merged": ([*LLAMA, *LOWRANK], True, "LlamaForCausalLM"),
    "blockshuffle-llama-remote": ([*LLAMA, "model.ffn.kind=blockshuffle", "model.ffn.num_blocks=4"], False,
                                  "LowRankLMForCausalLM"),
    "blockdense-remote": (["model.ffn.kind=blockdense", "model.ffn.rank=16", "model.ffn.num_blocks=4",
                           "model.num_kv_heads=2", "model.attn_dim=32"], False, "LowRankLMForCausalLM"),
    # no stock class has RMSNorm with a plain GELU FFN: a dense model falls back to the remote class
    "rmsnorm-gelu-dense": (["model.norm=rmsnorm"], False, "LowRankLMForCausalLM"),
}
WITH_TOKENIZER = {"gpt-dense", "lowrank-remote"}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer_file):
    """name -> (our model, exported folder, export's stdout), built on first use."""
    root = tmp_path_factory.mktemp("export")
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            overrides, merge, _ = CASES[name]
            tok = tokenizer_file if name in WITH_TOKENIZER else None
            model = make_run(root / name, overrides, tok, seed=len(done))
            out = root / f"{name}-hf"
            code, stdout, stderr = cli("export", str(root / name), str(out), *(["--merge"] if merge else []))
            assert code == 0, stderr
            done[name] = (model, out, stdout)
        return done[name]

    return get


def load_hf(folder: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    return model.eval()


def cut_at(tokens: list[int], eos: int | None) -> list[int]:
    """Generated tokens up to and including the first eos (transformers stops there, pads after)."""
    return tokens[:tokens.index(eos) + 1] if eos is not None and eos in tokens else tokens


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_computes_our_logits_and_greedy_tokens(exported, name):
    ours, folder, stdout = exported(name)
    hf = load_hf(folder)
    assert type(hf).__name__ == CASES[name][2]
    assert CASES[name][2] in stdout
    torch.manual_seed(1)
    ids = torch.randint(0, MODEL_VOCAB, (2, ours.cfg.seq_len))
    with torch.no_grad():
        err = relative_error(ours(ids), hf(ids).logits)
    assert err < 1e-4, f"{name}: max logit difference {err:.2e} of the largest logit"

    prompt = ids[:, :6]
    eos = hf.generation_config.eos_token_id
    mine = generate(ours, prompt, 16, temperature=0)[:, 6:].tolist()
    theirs = hf.generate(prompt, max_new_tokens=16, do_sample=False)[:, 6:].tolist()
    assert [cut_at(r, eos) for r in mine] == [cut_at(r, eos) for r in theirs]
    assert len(cut_at(mine[0], eos)) > 1  # the comparison covers decoding steps with the cache


def test_merged_export_is_dense_and_remote_export_keeps_the_factors(exported):
    from safetensors import safe_open

    def names(folder: Path) -> set[str]:
        with safe_open(folder / "model.safetensors", "pt") as f:
            return set(f.keys())

    _, merged, _ = exported("lowrank-merged")
    _, remote, _ = exported("lowrank-remote")
    assert "gpt_neox.layers.1.mlp.dense_h_to_4h.weight" in names(merged)
    assert {"model.blocks.1.ffn.up.u", "model.blocks.1.ffn.up.v"} <= names(remote)
    assert "model.blocks.0.ffn.up.weight" in names(remote)  # block 0 stays dense, as trained
    # the wrapper, and the modules of the structures it uses (the dense baseline's too: block 0), as recorded
    assert sorted(p.name for p in remote.glob("*.py")) == [
        "base.py", "configuration_lowrank_lm.py", "dense.py", "init.py", "lowrank.py", "modeling_lowrank_lm.py",
        "projection.py", "structure.py", "structures_lowrank_lm.py"]
    assert set(json.loads((remote / "lowrank_lm_export.json").read_text())["files"]) >= {
        p.name for p in remote.glob("*.py")}
    assert not list(merged.glob("*.py"))
    # the remote files stand alone: a user loads them without lowrank_lm installed
    for f in remote.glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+lowrank_lm\b", f.read_text(), re.MULTILINE)
    hf_params = sum(p.numel() for p in load_hf(remote).parameters())
    ours, _, _ = exported("lowrank-remote")
    assert hf_params == sum(p.numel() for p in ours.parameters())


def test_tokenizer_comes_along(exported, tokenizer_file):
    from tokenizers import Tokenizer

    _, folder, stdout = exported("gpt-dense")
    assert "with tokenizer" in stdout
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ref = Tokenizer.from_file(str(tokenizer_file))
    text = sentences(3, seed=7)[0]
    assert tok(text)["input_ids"] == ref.encode(text).ids
    assert tok.decode(ref.encode(text).ids) == text
    eos = ref.token_to_id("<|endoftext|>")
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert tok.eos_token_id == eos
    assert json.loads((folder / "config.json").read_text())["eos_token_id"] == eos
    _, remote, stdout = exported("lowrank-remote")
    assert "AutoTokenizer.from_pretrained" in stdout and stdout.count("trust_remote_code=True") == 2
    remote_tok = transformers.AutoTokenizer.from_pretrained(remote, trust_remote_code=True)
    assert remote_tok(text)["input_ids"] == ref.encode(text).ids


def test_export_without_tokenizer_says_so(exported):
    _, folder, stdout = exported("llama-gqa")
    assert "without a tokenizer" in stdout
    assert not (folder / "tokenizer.json").exists()


def test_dense_model_without_stock_class_says_it_uses_remote_code(exported):
    _, _, stdout = exported("rmsnorm-gelu-dense")
    assert "no stock transformers class has model.norm=rmsnorm with model.activation=gelu" in stdout


def test_remote_model_handles_left_padding(exported):
    # batched generation in transformers pads on the left: real tokens must not see the padding
    _, folder, _ = exported("blockdense-remote")
    hf = load_hf(folder)
    torch.manual_seed(2)
    a, b = torch.randint(0, MODEL_VOCAB, (10,)), torch.randint(0, MODEL_VOCAB, (7,))
    batch = torch.stack([a, torch.cat([torch.zeros(3, dtype=torch.long), b])])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    with torch.no_grad():
        padded = hf(batch, attention_mask=mask).logits
        alone = hf(b[None]).logits
    assert relative_error(alone[0], padded[1, 3:]) < 1e-5
    out = hf.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False)
    single = hf.generate(b[None], max_new_tokens=5, do_sample=False)
    assert out[1, 10:].tolist() == single[0, 7:].tolist()


@pytest.mark.parametrize("overrides,argv,message", [
    (["model.norm=rmsnorm", *LOWRANK], ["--merge"], "cannot export a merged model onto a stock class: no stock "
                                                    "transformers class has model.norm=rmsnorm"),
    (["model.num_kv_heads=2"], ["--arch", "gpt_neox"], "GPTNeoXForCausalLM has no grouped-query attention"),
    (LOWRANK, ["--arch", "starcoder2"], "add --merge"),
])
def test_unrepresentable_exports_are_refused_in_one_line(tmp_path, overrides, argv, message):
    make_run(tmp_path / "run", overrides)
    code, out, err = cli("export", str(tmp_path / "run"), str(tmp_path / "hf"), *argv)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()


def test_export_refuses_a_non_empty_folder_unless_it_is_an_export(tmp_path):
    make_run(tmp_path / "run", [])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = cli("export", str(tmp_path / "run"), str(tmp_path / "busy"), "--overwrite")
    assert code == 2 and "not an earlier export" in err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert cli("export", str(tmp_path / "run"), str(tmp_path / "hf"))[0] == 0
    assert cli("export", str(tmp_path / "run"), str(tmp_path / "hf"))[0] == 2
    assert cli("export", str(tmp_path / "run"), str(tmp_path / "hf"), "--overwrite")[0] == 0


def test_export_overwrite_replaces_only_what_the_earlier_export_wrote(tmp_path):
    make_run(tmp_path / "run", [])
    hf_model = tmp_path / "foreign"  # a Hugging Face folder we did not write: config.json is not ours
    hf_model.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        (hf_model / name).write_text("theirs")
    code, _, err = cli("export", str(tmp_path / "run"), str(hf_model), "--overwrite")
    assert code == 2 and f"{hf_model} is not an earlier export (no lowrank_lm_export.json)" in err
    assert sorted(p.name for p in hf_model.iterdir()) == ["config.json", "pytorch_model.bin"]

    out = tmp_path / "hf"
    assert cli("export", str(tmp_path / "run"), str(out))[0] == 0
    ours = set(json.loads((out / "lowrank_lm_export.json").read_text())["files"])
    assert ours == {p.name for p in out.iterdir()} and "model.safetensors" in ours
    (out / "README.md").write_text("my notes")
    (out / "eval-results").mkdir()
    (out / "eval-results" / "hellaswag.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"stale")
    assert cli("export", str(tmp_path / "run"), str(out), "--overwrite")[0] == 0
    assert (out / "README.md").read_text() == "my notes"
    assert (out / "eval-results" / "hellaswag.json").read_text() == "{}"
    assert (out / "model.safetensors").read_bytes() != b"stale"

    (out / "lowrank_lm_export.json").write_text(json.dumps({"files": ["config.json"]}))
    code, _, err = cli("export", str(tmp_path / "run"), str(out), "--overwrite")  # the record disowns them
    assert code == 2 and f"{out / 'model.safetensors'} was not written by the earlier export" in err
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert not list(tmp_path.glob(".hf.tmp-*"))


def test_bfloat16_export_loads_in_bfloat16(tmp_path):
    ours = make_run(tmp_path / "run", LOWRANK)
    assert cli("export", str(tmp_path / "run"), str(tmp_path / "hf"), "--merge", "--dtype", "bfloat16")[0] == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto").eval()
    assert next(hf.parameters()).dtype == torch.bfloat16
    ids = torch.randint(0, MODEL_VOCAB, (1, 16))
    with torch.no_grad():
        assert relative_error(ours(ids), hf(ids).logits.float()) < 0.05  # bf16 weights: ~3 significant digits


def test_a_failed_export_leaves_nothing_behind(tmp_path, tokenizer_file):
    # the tokenizer is found only while writing: a mismatch there must not leave a half export
    make_run(tmp_path / "run", ["model.vocab_size=200"], tokenizer_file)
    code, _, err = cli("export", str(tmp_path / "run"), str(tmp_path / "hf"))
    assert code == 2 and "belongs to another run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
