"""Helpers for the ecosystem tests (export, lm-eval, generate, API): runs with a real tokenizer.json.

The tokenizer is a byte-level BPE trained with the ``tokenizers`` library on generated sentences,
like the bpe-* tokenizers of prepared data dirs; models get a vocabulary just larger than it.
"""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import pytest
import torch

from lowrank_lm.checkpoint import save_checkpoint
from lowrank_lm.cli import main
from lowrank_lm.model import Transformer

from .conftest import small_config

WORDS = ["the", "cat", "dog", "bird", "sat", "ran", "flew", "on", "under", "over", "a", "mat", "log", "tree",
         "big", "small", "red", "blue", "quick", "slow", "and", "then", "it", "was", "very", "happy", "sad",
         "morning", "night", "river", "stone"]
TOKENIZER_VOCAB = 300
MODEL_VOCAB = 320  # >= the tokenizer's vocabulary, as in a real run


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)]


def make_tokenizer(path: Path) -> Path:
    """Train a small byte-level BPE with <|endoftext|> and save it as ``path`` (tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences(400), trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def make_hub_tokenizer(folder: Path) -> Path:
    """A LLaMA-style hub tokenizer saved with ``save_pretrained``: a BPE with <unk>, <s> and </s>, eos
    ``</s>`` and bos ``<s>`` in its tokenizer_config.json (as data dirs keep ``llama`` in ``tokenizer/``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences(400), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(folder))
    return folder


def make_run(run_dir: Path, overrides: list[str], tokenizer: Path | None = None, seed: int = 0) -> Transformer:
    """Save a step-1 checkpoint of a small model whose every parameter (norms, biases too) is random.

    The default init has zero biases and unit norms, under which a wrong bias or norm mapping
    would go unnoticed; noise on everything makes each weight count.
    """
    torch.manual_seed(seed)
    cfg = small_config(f"model.vocab_size={MODEL_VOCAB}", *overrides)
    model = Transformer(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(run_dir, 1, model, cfg)
    if tokenizer is not None:
        (run_dir / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    return model.eval()


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``lowrank-lm ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return exit_.value.code, out.getvalue(), err.getvalue()


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |ours|: the tolerance measure of the export tests."""
    return float((ours - theirs).abs().max() / ours.abs().max())
