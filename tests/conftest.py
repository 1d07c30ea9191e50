"""Shared test helpers: small configs and a single torch thread (tests run beside each other)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowrank_lm.config import Config
from lowrank_lm.resolve import load_config

torch.set_num_threads(1)


def small_config(*overrides: str) -> Config:
    """A 2-layer, 64-wide model config with a 97-token vocabulary, plus overrides."""
    base = ["model.vocab_size=97", "model.seq_len=32", "model.num_layers=2", "model.hidden_dim=64",
            "model.num_q_heads=4"]
    return load_config(None, base + list(overrides))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A slice of the embedded corpus with a 512-token BPE (small, so tiny models train fast)."""
    from lowrank_lm.config import DataConfig
    from lowrank_lm.data import prepare

    d = tmp_path_factory.mktemp("tiny-data")
    return prepare(DataConfig(source="embedded", tokenizer="bpe-512", dir=str(d), val_tokens=8192,
                              max_tokens=120_000), progress=False)


def tiny_run_config(data_dir: Path, out: Path, *overrides: str) -> Config:
    """A 2-layer, 32-wide model on ``tiny_data``: 20 steps of 8 x 32 tokens, fp32, checkpoint every 4 steps."""
    base = [
        "model.vocab_size=512", "model.seq_len=32", "model.num_layers=2", "model.hidden_dim=32",
        "model.num_q_heads=2", f"data.dir={data_dir}", "data.tokenizer=bpe-512", "data.val_tokens=8192",
        "data.max_tokens=120000",
        "train.tokens=5120", "train.global_batch_size=8", "train.micro_batch_size=4", "train.precision=fp32",
        "train.lr=3e-3", "train.log_interval=1", "train.eval_tokens=2048", "train.checkpoint_interval=4",
        "train.keep_checkpoints=10", f"train.out_dir={out}", "train.device=cpu",
    ]
    return load_config(None, base + list(overrides))
