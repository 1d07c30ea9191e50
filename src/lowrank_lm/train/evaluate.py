"""Validation loss and perplexity on the fixed held-out token set."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from lowrank_lm.train.distributed import all_reduce_sum
from lowrank_lm.train.progress import EvalProgress


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU and CUDA alike (fp32 master weights), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data_dir: str | Path, seq_len: int, batch_size: int, device: torch.device,
             precision: str, max_tokens: int | None = None, rank: int = 0, world_size: int = 1,
             progress: Callable[[int], None] | None = None) -> dict:
    """Mean token cross-entropy over the validation set (or its first ``max_tokens``): loss, ppl, tokens.

    With ``world_size`` processes each scores its share of the sequences and the token-weighted sums are
    all-reduced: the same tokens and, to float rounding, the same loss as one process.
    """
    from lowrank_lm.data import validation_batches

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for inputs, targets in validation_batches(data_dir, seq_len, batch_size, max_tokens, rank, world_size):
            inputs, targets = inputs.to(device), targets.to(device)
            # -1 marks a batch that only keeps this rank in step with the others (see validation_batches);
            # the model's loss skips it and, with train.loss_chunk_tokens, never holds the full logits
            with autocast(device, precision):
                loss = model(inputs, targets, reduction="sum")
            total += float(loss)
            count += int((targets != -1).sum())
            if progress is not None:  # tokens scored so far, by all ranks (they move in step)
                progress(count * world_size)
    finally:
        model.train(was_training)
    loss_sum, tokens = all_reduce_sum([total, float(count)], device)
    if tokens == 0:
        return {"loss": float("nan"), "ppl": float("nan"), "tokens": 0}
    loss = loss_sum / tokens
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": int(tokens)}


def validation_size(data_dir: str | Path, seq_len: int, max_tokens: int | None = None) -> int:
    """How many tokens :func:`evaluate` scores (all ranks together): whole sequences of the validation split."""
    from lowrank_lm.data import load_manifest

    sequences = (load_manifest(data_dir).tokens["val"] - 1) // seq_len
    if max_tokens is not None:
        sequences = min(sequences, max_tokens // seq_len)
    return max(0, sequences) * seq_len


class Evaluator:
    """The validation loss during a run: scored on every rank, its progress shown and its record logged by
    rank 0 (``say`` prints a line, ``record`` writes a metrics record)."""

    def __init__(self, data_dir: str | Path, seq_len: int, batch_size: int, device: torch.device, precision: str,
                 max_tokens: int | None, rank: int, world_size: int, say: Callable[[str], None],
                 record: Callable[[dict], None]) -> None:
        self.data_dir, self.seq_len, self.batch_size, self.max_tokens = data_dir, seq_len, batch_size, max_tokens
        self.device, self.precision, self.rank, self.world_size = device, precision, rank, world_size
        self.say, self.record = say, record

    def __call__(self, model: torch.nn.Module, step: int, tokens: int) -> dict:
        """Evaluate ``model`` after ``step`` steps (``tokens`` trained); returns the metrics record."""
        shown = EvalProgress(validation_size(self.data_dir, self.seq_len, self.max_tokens), self.say,
                             enabled=self.rank == 0)
        result = evaluate(model, self.data_dir, self.seq_len, self.batch_size, self.device, self.precision,
                          self.max_tokens, self.rank, self.world_size, progress=shown)
        shown.close()
        record = {"step": step, "tokens": tokens, "val_loss": result["loss"], "val_ppl": result["ppl"],
                  "val_tokens": result["tokens"]}
        self.record(record)
        self.say(f"step {step}: val loss {result['loss']:.4f}, ppl {result['ppl']:.2f} "
                 f"({result['tokens']:,} tokens)")
        return record
