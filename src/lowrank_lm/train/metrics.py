"""Where training numbers go: a JSONL file always, TensorBoard and Weights & Biases when available."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lowrank_lm.atomic import open_append, write_text_atomic
from lowrank_lm.train.progress import TrainProgress

FLOP_CONVENTION = "paper: 3 x forward, full-context attention, no embeddings"
"""How ``mfu`` counts FLOPs (see :mod:`lowrank_lm.accounting`); named in every record that carries an MFU."""


def resolve_peak_flops(device: torch.device, peak_tflops: float | None) -> float | None:
    """Peak FLOP/s of one device: ``train.peak_tflops`` when set (any device, CPUs included), else the
    table of known GPUs (:func:`lowrank_lm.accounting.peak_flops`), else None (MFU "unknown")."""
    from lowrank_lm.accounting import peak_flops

    return peak_tflops * 1e12 if peak_tflops is not None else peak_flops(device)


def throughput(tokens: int, seconds: float, world_size: int, flops_per_token: int,
               peak: float | None) -> dict[str, Any]:
    """Tokens/s of all processes and of one, and MFU of one device against its own peak.

    ``tokens`` were processed by ``world_size`` devices together in ``seconds``; each device did its share,
    so its model FLOP/s is ``flops_per_token x tokens / seconds / world_size``.
    """
    global_tps = tokens / max(seconds, 1e-9)
    per_device = global_tps / world_size
    return {"tokens_per_s": global_tps, "tokens_per_s_per_device": per_device,
            "mfu": flops_per_token * per_device / peak if peak else "unknown", "mfu_flops": FLOP_CONVENTION}


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl``; mirrors scalars to TensorBoard / W&B."""

    def __init__(self, run_dir: Path, resume_step: int | None, use_wandb: bool, config: dict[str, Any]) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open_append(self.path)  # held open for the whole run, closed in close()
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "events"))
        except ImportError:
            pass  # the tensorboard extra is optional; the JSONL file has everything
        self._wandb = None
        if use_wandb:
            try:
                import wandb

                self._wandb = wandb.init(project="lowrank-lm", config=config, dir=str(run_dir),
                                         resume="allow", name=run_dir.name)
            except ImportError:
                print("note: train.wandb=true but wandb is not installed (pip install wandb); skipping it",
                      file=sys.stderr)

    def _truncate_after(self, step: int) -> None:
        """Resuming at ``step``: keep the records up to it, so the history equals an uninterrupted run's."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("step", 0) <= step:
                kept.append(line)
        write_text_atomic(self.path, "".join(k + "\n" for k in kept))

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record.get("step", 0)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                if k != "step":
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        """Close the file and the writers (safe to call again: a run that fails after closing closes again)."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class TrainLog:
    """The training steps' records: to ``metrics`` (rank 0's :class:`MetricsLogger`; None on the other ranks)
    and to ``progress``, with the throughput of the steps since the last logged one."""

    def __init__(self, metrics: MetricsLogger | None, progress: TrainProgress, world_size: int,
                 flops_per_token: int, peak: float | None) -> None:
        self.metrics, self.progress = metrics, progress
        self.world_size, self.flops_per_token, self.peak = world_size, flops_per_token, peak
        self.window_tokens, self.window_seconds = 0, 0.0
        self.started = time.perf_counter()

    def count(self, tokens: int, seconds: float) -> None:
        """A training step of ``tokens`` (all ranks) took ``seconds``."""
        self.window_tokens += tokens
        self.window_seconds += seconds

    def record(self, record: dict[str, Any]) -> None:
        """Write one record (an evaluation, a skipped step) to the metrics file, on rank 0."""
        if self.metrics is not None:
            self.metrics.log(record)

    def step(self, record: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Log a training step: ``record`` (step, tokens, loss, lr, ...), the window's throughput, the time
        since the start and ``extra``; shown as progress too. Returns the full record."""
        full = {**record, **throughput(self.window_tokens, self.window_seconds, self.world_size,
                                       self.flops_per_token, self.peak),
                "elapsed_s": time.perf_counter() - self.started, **(extra or {})}
        self.window_tokens, self.window_seconds = 0, 0.0
        self.record(full)
        self.progress.update(full)
        return full

    def close(self) -> None:
        """Close the progress display (if still open) and the metrics file."""
        self.progress.close()
        if self.metrics is not None:
            self.metrics.close()
