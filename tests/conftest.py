"""Shared test helpers: small configs and a single torch thread (tests run beside each other)."""

from __future__ import annotations

import torch

from lowrank_lm.config import Config, load_config

torch.set_num_threads(1)


def small_config(*overrides: str) -> Config:
    """A 2-layer, 64-wide model config with a 97-token vocabulary, plus overrides."""
    base = ["model.vocab_size=97", "model.seq_len=32", "model.num_layers=2", "model.hidden_dim=64",
            "model.num_q_heads=4"]
    return load_config(None, base + list(overrides))
