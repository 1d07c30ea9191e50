"""A floor on the memory a training run needs, checked before anything is allocated.

Without it a configuration far too large for the machine (``model.seq_len=100000`` on a laptop) allocates until
the kernel kills the process, with no message. The estimate counts only what training cannot avoid holding at
once, so it is a lower bound: a run it refuses cannot fit; a run it admits may still not fit (allocator slack,
temporaries, framework overhead are not counted).

* optimiser state: fp32 weights, gradients and AdamW's two moments, 16 bytes per parameter (FSDP: a 1/world
  share per process);
* activations kept for the backward pass by every block: its input, the two norm outputs, q, k, v and the
  attention output, the residual, the FFN's up projection and its activation (micro-batch x seq_len tokens, in
  the autocast dtype); with activation checkpointing only each block's input;
* the loss's fp32 log-probabilities over the vocabulary, for all tokens of the micro-batch or one chunk
  (``train.loss_chunk_tokens``).

Set ``LOWRANK_LM_MEMORY_CHECK=off`` to skip the check (e.g. with swap or memory the estimate cannot see).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lowrank_lm.config import Config
from lowrank_lm.errors import UserError

ENV = "LOWRANK_LM_MEMORY_CHECK"
"""Environment variable: ``off`` skips the check."""

GiB = 2**30


@dataclass(frozen=True)
class MemoryFloor:
    """Bytes one training process holds at least, by part."""

    optimizer: int
    activations: int
    logits: int
    tokens: int
    """Tokens of one micro-batch."""

    @property
    def total(self) -> int:
        return self.optimizer + self.activations + self.logits


def training_floor(cfg: Config, params: int, micro_batch: int, world: int, sharded: bool) -> MemoryFloor:
    """The least memory one process needs to train ``cfg`` (see the module docstring for what is counted)."""
    model_cfg, train_cfg = cfg.model, cfg.train
    tokens = micro_batch * model_cfg.seq_len
    element_bytes = 2 if train_cfg.precision == "bf16" else 4
    ffn_dim, attn_dim = model_cfg.resolved_ffn_dim, model_cfg.resolved_attn_dim
    if train_cfg.activation_checkpointing:
        per_token = model_cfg.hidden_dim
    else:
        per_token = 4 * model_cfg.hidden_dim + 2 * attn_dim + 2 * model_cfg.kv_dim + 2 * ffn_dim
    logit_tokens = min(tokens, train_cfg.loss_chunk_tokens) if train_cfg.loss_chunk_tokens else tokens
    return MemoryFloor(optimizer=16 * params // (world if sharded else 1),
                       activations=tokens * model_cfg.num_layers * per_token * element_bytes,
                       logits=logit_tokens * model_cfg.vocab_size * 4, tokens=tokens)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this process: the GPU's free memory, or the machine's MemAvailable shared by the
    processes of this node (LOCAL_WORLD_SIZE); None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(cfg: Config, params: int, micro_batch: int, world: int, sharded: bool,
               device: torch.device) -> None:
    """Refuse a run whose memory floor exceeds what this machine has free, in one line with the numbers."""
    if os.environ.get(ENV, "").lower() == "off":
        return
    free = available_bytes(device)
    floor = training_floor(cfg, params, micro_batch, world, sharded)
    if free is None or floor.total <= free:
        return
    raise UserError(
        f"this run needs at least {floor.total / GiB:.1f} GiB per process (optimiser state "
        f"{floor.optimizer / GiB:.1f}, activations {floor.activations / GiB:.1f} and loss "
        f"{floor.logits / GiB:.1f} GiB for {floor.tokens:,} tokens per micro-batch = train.micro_batch_size "
        f"{micro_batch} x model.seq_len {cfg.model.seq_len}) but {device.type} has {free / GiB:.1f} GiB free; lower "
        "train.micro_batch_size or model.seq_len, set train.loss_chunk_tokens or "
        f"train.activation_checkpointing=true, or set {ENV}=off to try anyway")
