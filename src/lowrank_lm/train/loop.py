"""The training loop: token budget, AdamW with warmup + cosine, bf16 autocast, gradient accumulation,
self-guided training, DDP / FSDP2 under torchrun, evaluation, metrics and exact-resume checkpoints.

:meth:`Trainer._run` reads top to bottom; it hands off to the checkpointer (:mod:`lowrank_lm.train.checkpointer`),
the evaluator (:mod:`lowrank_lm.train.evaluate`) and the step log (:mod:`lowrank_lm.train.metrics`), and keeps
the run's changing numbers in one :class:`~lowrank_lm.train.state.TrainState`.
"""

from __future__ import annotations

import importlib.util
import math
import resource
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowrank_lm.accounting import account
from lowrank_lm.config import Config, config_to_dict
from lowrank_lm.data.tokenizer import copy_tokenizer
from lowrank_lm.errors import UserError
from lowrank_lm.fallback import failed, fell_back, ran
from lowrank_lm.faults import crash_point
from lowrank_lm.layers import registry
from lowrank_lm.model import Transformer
from lowrank_lm.provenance import Provenance, collect_provenance
from lowrank_lm.train import distributed
from lowrank_lm.train.agreement import all_or_none, said_once
from lowrank_lm.train.checkpointer import Checkpointer
from lowrank_lm.train.compiling import COMPILED, use_compile
from lowrank_lm.train.curves import write_run_plot
from lowrank_lm.train.evaluate import Evaluator, autocast
from lowrank_lm.train.memory_check import check_fits
from lowrank_lm.train.metrics import MetricsLogger, TrainLog, resolve_peak_flops
from lowrank_lm.train.progress import CoreWatch, TrainProgress
from lowrank_lm.train.rundir import RunDir
from lowrank_lm.train.schedule import lr_at
from lowrank_lm.train.self_guided import SelfGuidance
from lowrank_lm.train.state import TrainState, capture_rng
from lowrank_lm.train.summary import RunSummary, StoppedRun


def forward_backward(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                     precision: str) -> torch.Tensor:
    """Accumulate gradients of the mean loss over equal micro-batches; returns that mean loss (detached).

    Each micro-batch loss is divided by their number, so k micro-batches give the gradient of one batch k
    times larger. DDP all-reduces and FSDP2 reduce-scatters gradients only on the last micro-batch.
    """
    count = len(batches)
    total = torch.zeros((), device=device)
    for index, (inputs, targets) in enumerate(batches):
        last = index == count - 1
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: earlier micro-batches keep unsharded grads
            model.set_requires_gradient_sync(last)
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, precision):
                loss = model(inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True))
            (loss / count).backward()
        total += loss.detach()
    return total / count


@dataclass
class _Parts:
    """What a session trains with: the model, its wrapped form (DDP, compile), the optimiser, the loaders."""

    model: Transformer
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    loaders: dict[str, Any]


@dataclass
class _Step:
    """One training step as the loop sees it once taken."""

    index: int
    """The step's number before it was taken (state.step is one more now)."""
    lr: float
    loss: float
    grad_norm: float
    finite: bool
    stop_asked: bool
    """A stop signal arrived on some rank."""
    checkpoint_due: bool
    """train.checkpoint_minutes have passed (rank 0's clock)."""
    seconds: float


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Trainer:
    """One training run of a :class:`Config`; ``run()`` trains to the end of the token budget."""

    def __init__(self, cfg: Config, overwrite: bool = False, max_steps: int | None = None) -> None:
        if max_steps is not None and max_steps < 1:  # no step, so no checkpoint: nothing could be resumed
            raise UserError(f"--max-steps {max_steps}: give at least 1 (the number of steps after which the run "
                            "stops with a checkpoint)")
        self.cfg, self.overwrite, self.max_steps = cfg, overwrite, max_steps
        self.provenance: Provenance | None = None  # collected by rank 0, the rank that writes the records
        train_cfg = cfg.train
        self.dist = distributed.setup(train_cfg.device, timeout_minutes=train_cfg.dist_timeout_minutes)
        self.device = self.dist.device
        world = self.dist.world_size
        self.micro_batch = train_cfg.micro_batch_size or max(1, train_cfg.global_batch_size // world)
        if train_cfg.global_batch_size % (self.micro_batch * world):
            raise UserError(f"train.global_batch_size={train_cfg.global_batch_size} is not divisible by "
                            f"micro_batch_size x processes = {self.micro_batch} x {world}; change one of them")
        self.accumulation = train_cfg.global_batch_size // (self.micro_batch * world)
        if train_cfg.distributed == "fsdp" and train_cfg.self_guided.enabled:
            raise UserError("self-guided training is supported with train.distributed=ddp only; switch to ddp")
        # FSDP2 shards whenever there is a process group (torchrun), one process included
        self.sharded = train_cfg.distributed == "fsdp" and self.dist.launched
        self.accounting = account(cfg)
        if self.accounting.steps < 1:
            raise UserError(f"the token budget ({self.accounting.tokens_requested} tokens) is less than one step "
                            f"of {self.accounting.tokens_per_step} tokens; raise train.tokens or lower "
                            "global_batch_size")
        # before any allocation
        check_fits(cfg, self.accounting.params, self.micro_batch, world, self.sharded, self.device)
        if train_cfg.wandb and importlib.util.find_spec("wandb") is None:  # a setting that cannot apply
            raise UserError("train.wandb=true but wandb is not installed; pip install wandb (then wandb login), "
                            "or set train.wandb=false")
        self.guidance = SelfGuidance(train_cfg.self_guided, self.accounting.steps, seed=train_cfg.seed,
                                     rank=self.dist.rank)
        self.compiled = False  # whether the training step runs under torch.compile (set by _wrap)
        self.total_steps = self.guidance.total_steps
        self.run_dir = RunDir(train_cfg.out_dir)
        self.checkpointer = Checkpointer(cfg, self.run_dir.path, self.dist, self.sharded, self._log)
        self._session_start = time.perf_counter()
        self._stopped_by = "max_steps"

    # ------------------------------------------------------------------ the run
    def run(self) -> RunSummary | StoppedRun:
        """Train to the end of the token budget, or until --max-steps or a stop signal (then resumable)."""
        data_dir = self._setup_data()  # data problems surface before anything is written to out_dir
        resume_from = self._setup_outputs()
        previous = self._catch_stop_signals()
        try:
            return self._run(data_dir, resume_from)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.dist.is_main:
                self.run_dir.release()

    def _run(self, data_dir: Path, resume_from: Path | None) -> RunSummary | StoppedRun:
        """Build (or restore) model, optimiser, loaders and state; train step by step; log, evaluate and
        checkpoint on their intervals; stop on the budget, --max-steps or a signal; summarise."""
        train_cfg = self.cfg.train
        parts, state = self._build(data_dir, resume_from)
        metrics = self._open_outputs(data_dir, state.step if resume_from is not None else None)
        self._announce(state.step, resume_from)
        stop_at = self.total_steps if self.max_steps is None else min(self.total_steps, self.max_steps)
        log = TrainLog(metrics, self._progress(state.step, stop_at), self.dist.world_size,
                       self.accounting.flops_per_token, resolve_peak_flops(self.device, train_cfg.peak_tflops))
        try:
            return self._train(data_dir, parts, state, log, stop_at)
        except BaseException:
            log.close()  # a failed or interrupted run leaves no metrics file or TensorBoard writer open
            raise

    def _train(self, data_dir: Path, parts: _Parts, state: TrainState, log: TrainLog,
               stop_at: int) -> RunSummary | StoppedRun:
        """Step to ``stop_at``, logging, evaluating and checkpointing on their intervals; then summarise."""
        train_cfg = self.cfg.train
        evaluator = Evaluator(data_dir, self.cfg.model.seq_len, self.micro_batch, self.device, train_cfg.precision,
                              train_cfg.eval_tokens, self.dist.rank, self.dist.world_size, self._log, log.record)
        self.checkpointer.last_save = time.perf_counter()  # the wall-clock cadence counts from here
        last_eval: dict[str, Any] | None = None
        while state.step < stop_at:
            step = self._train_step(parts, state)
            log.count(self.accounting.tokens_per_step, step.seconds)
            if not step.finite:
                self._skip(step, state, log)
                continue
            if state.step % train_cfg.log_interval == 0 or state.step == stop_at:
                self._log_step(step, state, log)
            if train_cfg.eval_interval and state.step % train_cfg.eval_interval == 0 and state.step < self.total_steps:
                last_eval = evaluator(parts.model, state.step, state.tokens)
            at_interval = (train_cfg.checkpoint_interval and state.step % train_cfg.checkpoint_interval == 0)
            if step.stop_asked and state.step < stop_at:  # preempted: checkpoint this step and leave, resumable
                stop_at = self._stop_here(state.step)
            if at_interval or step.checkpoint_due or state.step == stop_at:
                self._save(parts, state)
        log.progress.close()
        if state.step < self.total_steps:  # stopped by max_steps or a signal: resumable, not finished
            log.close()
            return StoppedRun(steps=state.step, total_steps=self.total_steps, stopped_by=self._stopped_by,
                              run_dir=str(self.run_dir.path))
        if last_eval is None or last_eval.get("step") != state.step:
            last_eval = evaluator(parts.model, state.step, state.tokens)
        return self._finish(parts.model, state, last_eval, log)

    # ------------------------------------------------------------------ set-up
    def _log(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, file=sys.stderr, flush=True)

    def _setup_outputs(self) -> Path | None:
        """Lock the run dir, decide where to resume from; returns the checkpoint to resume or None."""
        with all_or_none():  # a locked or finished out_dir ends every rank, not rank 0 alone
            if self.dist.is_main:
                self.run_dir.acquire()
                try:
                    self.run_dir.prepare(self.cfg.train.resume, self.overwrite)
                except BaseException:
                    self.run_dir.release()
                    raise
        try:
            return self.checkpointer.choose_resume()
        except BaseException:
            if self.dist.is_main:
                self.run_dir.release()
            raise

    def _setup_data(self) -> Path:
        from lowrank_lm.data import check_compatible, load_manifest, prepare, resolve_data_dir

        data_dir: Path | None = None
        with all_or_none():  # rank 0 prepares while the others wait; its failure ends them all
            if self.dist.is_main:
                data_dir = prepare(self.cfg.data)
        with all_or_none():
            if data_dir is None:
                data_dir = resolve_data_dir(self.cfg.data)
            check_compatible(load_manifest(data_dir), self.cfg.model, self.cfg.data)
        return data_dir

    def _build(self, data_dir: Path, resume_from: Path | None) -> tuple[_Parts, TrainState]:
        """Model, optimiser and loaders, fresh or as ``resume_from`` left them, and the training state.

        The order is that of every earlier release (seed, model, guides, weights, optimiser, loaders, then the
        saved generator states), so that a resumed run continues bit for bit."""
        train_cfg = self.cfg.train
        torch.manual_seed(train_cfg.seed)
        model = Transformer(self.cfg.model)
        model.loss_chunk_tokens = train_cfg.loss_chunk_tokens
        state = TrainState() if resume_from is None else self.checkpointer.read_state(resume_from)
        if self.max_steps is not None and state.step >= self.max_steps:  # no step to take, no checkpoint to write
            raise said_once(UserError(f"--max-steps {self.max_steps}: the run is already at step {state.step} "
                                      f"({resume_from}); give a larger --max-steps to continue it"))
        self.guidance.attach(model, state.step)
        if resume_from is not None:
            self.checkpointer.load_weights(model, resume_from)
        model.to(self.device)
        model.activation_checkpointing = train_cfg.activation_checkpointing
        if self.sharded:
            distributed.shard_fsdp(model, train_cfg.precision)
        optimizer = self._build_optimizer(model)
        loaders = self._open_loaders(data_dir)
        if resume_from is not None:
            self.checkpointer.restore(model, optimizer, loaders, resume_from, state)
        return _Parts(model, self._wrap(model), optimizer, loaders), state

    def _open_loaders(self, data_dir: Path) -> dict[str, Any]:
        from lowrank_lm.data import TokenLoader

        def loader() -> TokenLoader:
            return TokenLoader(data_dir, "train", self.cfg.model.seq_len, self.micro_batch, self.cfg.train.seed,
                               self.dist.rank, self.dist.world_size)

        # fixedflop self-guidance re-reads the first batches at the end: a second reader from position 0
        return {"train": loader(), "replay": loader()}

    def _build_optimizer(self, model: Transformer) -> torch.optim.Optimizer:
        from lowrank_lm.train.optim import build_adamw

        train_cfg = self.cfg.train
        # Standard: one group, weight decay on every parameter (embeddings, biases and norms too), as the paper
        # does. muP: a learning-rate multiplier and weight decay per parameter (lowrank_lm.mup), in model order.
        return build_adamw(model, train_cfg.lr, train_cfg.betas, train_cfg.eps, train_cfg.weight_decay,
                           fused=self.device.type == "cuda")

    def _wrap(self, model: Transformer) -> nn.Module:
        train_cfg = self.cfg.train
        wrapped: nn.Module = model
        if self.dist.launched and train_cfg.distributed == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # a guide may sit out a micro-batch (stochastic FLOP reduction): DDP must tolerate unused params
            wrapped = DistributedDataParallel(model, device_ids=device_ids,
                                              find_unused_parameters=bool(SelfGuidance.guides(model)))
        # guided too: the guides' coins are tensors that torch.cond branches on (train.self_guided); but torch
        # 2.13 cannot compile a torch.cond inside an activation-checkpointed block (pytorch/pytorch#162246), so
        # those steps stay eager
        coins_in_checkpoints = (bool(SelfGuidance.guides(model)) and train_cfg.self_guided.reduce_flop
                                and train_cfg.activation_checkpointing)
        wanted = use_compile(train_cfg.compile, self.device)
        self.compiled = wanted and not coins_in_checkpoints and not failed(COMPILED)
        if wanted and coins_in_checkpoints:
            self._log("torch.compile waits for the end of guidance: the guides' coins (reduce_flop) cannot be "
                      "compiled under activation checkpointing")
        if self.compiled:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _open_outputs(self, data_dir: Path, resume_step: int | None) -> MetricsLogger | None:
        """Rank 0: the run's config with its provenance, the tokenizer, the metrics file (None elsewhere)."""
        if not self.dist.is_main:
            return None
        self.provenance = collect_provenance(data_dir)
        self.run_dir.write_config(self.cfg, self.provenance)
        copy_tokenizer(Path(data_dir), self.run_dir.path)
        return MetricsLogger(self.run_dir.path, resume_step, self.cfg.train.wandb, config_to_dict(self.cfg))

    def _announce(self, step: int, resume_from: Path | None) -> None:
        model_cfg, counts = self.cfg.model, self.accounting
        attention = f", {model_cfg.attn.kind} attention" if model_cfg.attn.kind != registry.DENSE else ""
        replayed = f" + {self.guidance.extra_steps} replayed steps" if self.guidance.extra_steps else ""
        self._log(f"training {counts.params / 1e6:.2f}M params ({model_cfg.ffn.kind} FFN{attention}) on "
                  f"{self.device} x {self.dist.world_size}: {counts.train_tokens:,} tokens = {counts.steps} steps x "
                  f"{counts.tokens_per_step} tokens{replayed}, {counts.train_flops:.3e} training FLOPs (paper "
                  f"convention); micro-batch {self.micro_batch} x {self.accumulation} accumulation; "
                  f"{self.cfg.train.precision}" + (f"; resuming at step {step}" if resume_from else ""))

    def _progress(self, start: int, stop: int) -> TrainProgress:
        watch = CoreWatch(torch.get_num_threads()) if self.dist.is_main and self.device.type == "cpu" else None
        return TrainProgress(start, stop, self._log, enabled=self.dist.is_main, watch=watch)

    def _catch_stop_signals(self) -> dict[int, Any]:
        """Ctrl-C (SIGINT), SIGTERM and SIGUSR1 (what clusters send before preempting a job) finish the current
        step, write a checkpoint and return; ``lowrank-lm train RUN_DIR`` resumes. Only from the main thread.

        A second Ctrl-C aborts at once (KeyboardInterrupt; a checkpoint being written is discarded whole), unless
        it comes within a second of the first: torchrun forwards the terminal's Ctrl-C to workers that have
        already received it themselves, and that copy is the same request.
        """
        self._stop_signal: str | None = None
        self._stop_time = 0.0
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, frame: Any) -> None:
            now = time.monotonic()
            if self._stop_signal is None:
                self._stop_signal, self._stop_time = signal.Signals(signum).name, now
            elif signum == signal.SIGINT and now - self._stop_time > 1.0:
                raise KeyboardInterrupt

        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}

    # ------------------------------------------------------------------ one step
    def _train_step(self, parts: _Parts, state: TrainState) -> _Step:
        """Forward, backward and (when finite) the optimiser's step at ``state.step``; advances ``state``."""
        train_cfg, index = self.cfg.train, state.step
        if self.guidance.active(index):
            self.guidance.set_step(parts.model, index)
        lr = lr_at(index, self.total_steps, train_cfg.lr, train_cfg.warmup_ratio, train_cfg.min_lr_ratio)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        loader = parts.loaders["replay" if self.guidance.is_replay(index) else "train"]
        began = time.perf_counter()
        batches = [loader.next_batch() for _ in range(self.accumulation)]
        loss_tensor, parts.train_model = self._step_or_eager(parts.train_model, parts.model, parts.optimizer,
                                                             batches)
        if self.guidance.active(index) and train_cfg.self_guided.reduce_flop and self.compiled:
            self.guidance.clear_skipped_grads(lambda used: distributed.all_reduce_ints(used, self.device))
        max_norm = train_cfg.grad_clip if train_cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parts.model.parameters(), max_norm))
        # one collective for the loss, a stop request (a signal on any rank stops all ranks together) and
        # rank 0's wall-clock checkpoint cadence
        loss_sum, stops, due = distributed.all_reduce_sum(
            [float(loss_tensor), float(self._stop_signal is not None), float(self.checkpointer.due())], self.device)
        loss = loss_sum / self.dist.world_size
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        self._update(parts.optimizer, state, finite)
        seconds = time.perf_counter() - began
        state.train_s += seconds
        state.step += 1
        state.tokens += self.accounting.tokens_per_step
        crash_point("train.step")
        if self.guidance.guided_steps and state.step == self.guidance.guided_steps:
            parts.optimizer, parts.train_model = self._end_guidance(parts.model, parts.optimizer)
        return _Step(index, lr, loss, grad_norm, finite, bool(stops), bool(due), seconds)

    def _update(self, optimizer: torch.optim.Optimizer, state: TrainState, finite: bool) -> None:
        """The optimiser's step, or a skipped one (a non-finite loss or gradient norm); gradients cleared."""
        if finite:
            optimizer.step()
            state.bad_in_row = 0
        else:
            state.bad_in_row += 1
            state.skipped += 1
        optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _step_or_eager(self, train_model: nn.Module, model: Transformer, optimizer: torch.optim.Optimizer,
                       batches: list) -> tuple[torch.Tensor, nn.Module]:
        """forward_backward on the compiled step; if compiling or running it fails (a compiler or driver problem,
        e.g. torch.cond self-guidance on some GPU), warn once, drop the step's gradients and run the same step
        eagerly from then on. Returns (mean loss, the model to train from now on)."""
        precision = self.cfg.train.precision
        if not self.compiled:
            return forward_backward(train_model, batches, self.device, precision), train_model
        try:
            loss = forward_backward(train_model, batches, self.device, precision)
        except Exception as e:  # a genuine error (out of memory) recurs eagerly and is raised from there
            fell_back(COMPILED, e)
            optimizer.zero_grad(set_to_none=True)
            train_model = self._wrap(model)  # eager now: failed(COMPILED)
            return forward_backward(train_model, batches, self.device, precision), train_model
        ran(COMPILED)
        return loss, train_model

    def _end_guidance(self, model: Transformer, optimizer: torch.optim.Optimizer):
        """Guidance over: drop the guides from the model and the optimiser (and re-wrap for DDP)."""
        guides = {id(param) for param in SelfGuidance.guides(model)}
        self.guidance.detach(model)
        kept = list(model.parameters())
        fresh = self._build_optimizer(model)
        for param in kept:
            if param in optimizer.state:
                fresh.state[param] = optimizer.state[param]
        assert not any(id(param) in guides for param in kept)
        self._log(f"self-guided training: guidance ended at step {self.guidance.guided_steps}; guides dropped")
        return fresh, self._wrap(model)

    def _skip(self, step: _Step, state: TrainState, log: TrainLog) -> None:
        """A skipped step: said and logged; train.max_bad_steps of them in a row stop the run."""
        self._log(f"step {step.index}: non-finite loss or gradient norm ({step.loss}, {step.grad_norm}); "
                  "step skipped")
        log.record({"step": state.step, "skipped": True, "loss": step.loss, "grad_norm": step.grad_norm})
        if state.bad_in_row >= self.cfg.train.max_bad_steps:
            last = self.checkpointer.newest()
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
            raise said_once(UserError(f"stopped after {state.bad_in_row} non-finite steps in a row at step "
                                      f"{state.step}; {where}; lower train.lr or check the data"))

    def _log_step(self, step: _Step, state: TrainState, log: TrainLog) -> None:
        record = {"step": state.step, "tokens": state.tokens, "loss": step.loss, "lr": step.lr,
                  "grad_norm": step.grad_norm}
        guided = self.guidance.active(step.index)
        log.step(record, {"guide_alpha": self.guidance.alpha(step.index)} if guided else None)

    def _stop_here(self, step: int) -> int:
        """A stop signal: this step is the last (checkpointed, resumable); returns it as the new stop."""
        self._stopped_by = self._stop_signal or "a signal on another rank"
        again = " (Ctrl-C again to abort at once)" if self._stop_signal == "SIGINT" else ""
        self._log(f"received {self._stop_signal or 'a stop request'}: checkpoint at step {step}, exiting{again}")
        return step

    # ------------------------------------------------------------------ checkpoints and the end
    def _save(self, parts: _Parts, state: TrainState) -> None:
        """Checkpoint ``state`` whole: its counters with this process's generators, the loaders' positions
        (global: valid for any number of ranks), the wall time and guide FLOPs so far. Collective."""
        snapshot = replace(state, rng=capture_rng(self.device),
                           wall_s=state.wall_s + time.perf_counter() - self._session_start,
                           guide_flops=self._guide_flops(parts.model, state),  # collective: every rank gets here
                           loaders={name: loader.state_dict() for name, loader in parts.loaders.items()})
        self.checkpointer.save(parts.model, parts.optimizer, snapshot, self.total_steps)

    def _guide_flops(self, model: Transformer, state: TrainState) -> int:
        """Guide FLOPs of the whole run so far, summed over all ranks (each counts its own tokens)."""
        tokens = distributed.all_reduce_ints(self.guidance.guided_tokens(), self.device)
        return state.guide_flops + SelfGuidance.guide_flops(model, tokens)

    def _finish(self, model: Transformer, state: TrainState, last_eval: dict, log: TrainLog) -> RunSummary:
        """The run summary (collective), written with the loss plot by rank 0."""
        summary = self._summary(model, state, last_eval)
        if self.dist.is_main:
            summary.write(self.run_dir.summary)
            log.close()
            self._log(_format_summary(summary))
            plot = write_run_plot(self.run_dir.path)  # RUN/loss.png, when matplotlib is installed
            if plot is not None:
                self._log(f"loss plot: {plot}")
        return summary

    def _summary(self, model: Transformer, state: TrainState, last_eval: dict) -> RunSummary:
        counts, cfg = self.accounting, self.cfg
        summary = RunSummary(
            name=self.run_dir.path.name, structure=cfg.model.ffn.kind, params=counts.params,
            params_non_embedding=counts.params_non_embedding, params_ffn=counts.params_ffn,
            tokens=state.tokens, unique_tokens=counts.train_tokens, steps=state.step,
            train_flops=counts.train_flops, train_s=state.train_s,
            wall_s=state.wall_s + time.perf_counter() - self._session_start,
            tokens_per_s=state.tokens / max(state.train_s, 1e-9), skipped_steps=state.skipped,
            peak_memory_mb=_peak_memory_mb(self.device), device=str(self.device),
            world_size=self.dist.world_size, precision=cfg.train.precision,
            final_val_loss=last_eval["val_loss"], final_val_ppl=last_eval["val_ppl"],
            val_tokens=last_eval["val_tokens"], provenance=self.provenance,
        )
        if self.guidance.guided_steps:
            guide_flops = self._guide_flops(model, state)  # collective: every rank computes the summary
            structured = self.total_steps * counts.tokens_per_step * counts.flops_per_token
            dense = account(replace(cfg, model=replace(cfg.model, ffn=replace(cfg.model.ffn, kind=registry.DENSE),
                                                       attn=replace(cfg.model.attn, kind=registry.DENSE))))
            summary = summary.replace(guided_steps=self.guidance.guided_steps, guide_flops=guide_flops,
                                      train_flops=structured + guide_flops,
                                      flop_ratio_to_dense=(structured + guide_flops) / dense.train_flops)
        return summary


def _format_summary(summary: RunSummary) -> str:
    return (f"done: {summary.tokens:,} tokens in {summary.wall_s:.1f}s ({summary.tokens_per_s:,.0f} tok/s in "
            f"training steps), peak memory {summary.peak_memory_mb:.0f} MB, final val loss "
            f"{summary.final_val_loss:.4f} ppl {summary.final_val_ppl:.2f}")


def run_training(cfg: Config, *, overwrite: bool = False,
                 max_steps: int | None = None) -> RunSummary | StoppedRun:
    """Train ``cfg`` to the end of its token budget (resuming if asked) and return the run summary.

    ``max_steps`` stops early after that many steps in total, with a checkpoint to resume from (for jobs
    with a time limit); so do Ctrl-C, SIGTERM and SIGUSR1. The result is then a :class:`StoppedRun`.
    """
    try:
        trainer = Trainer(cfg, overwrite=overwrite, max_steps=max_steps)
    except UserError as e:  # every rank reads the same config and fails alike: rank 0 says it
        distributed.teardown()
        raise said_once(e) from None
    try:
        return trainer.run()
    finally:
        distributed.teardown()
