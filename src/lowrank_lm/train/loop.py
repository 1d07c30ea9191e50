"""The training loop: token budget, AdamW with warmup + cosine, bf16 autocast, gradient accumulation,
self-guided training, DDP / FSDP2 under torchrun, evaluation, metrics and exact-resume checkpoints."""

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
from lowrank_lm.checkpoint import (
    check_checkpoint,
    is_sharded,
    list_checkpoints,
    load_state,
    model_state,
    old_format,
    prune_checkpoints,
    refuse_old_format,
    resolve_checkpoint,
    save_checkpoint,
    writing,
)
from lowrank_lm.config import Config, config_to_dict, load_config
from lowrank_lm.data.tokenizer import copy_tokenizer
from lowrank_lm.errors import UserError
from lowrank_lm.fallback import failed, fell_back, ran
from lowrank_lm.faults import crash_point
from lowrank_lm.layers import registry
from lowrank_lm.model import Transformer
from lowrank_lm.provenance import Provenance, collect_provenance
from lowrank_lm.train import distributed
from lowrank_lm.train.agreement import all_or_none, said_once
from lowrank_lm.train.compiling import COMPILED, use_compile
from lowrank_lm.train.curves import write_run_plot
from lowrank_lm.train.evaluate import autocast, evaluate, validation_size
from lowrank_lm.train.memory_check import check_fits
from lowrank_lm.train.metrics import MetricsLogger, resolve_peak_flops, throughput
from lowrank_lm.train.progress import CoreWatch, EvalProgress, TrainProgress
from lowrank_lm.train.rundir import RunDir
from lowrank_lm.train.schedule import lr_at
from lowrank_lm.train.self_guided import SelfGuidance
from lowrank_lm.train.summary import RunSummary, StoppedRun


def forward_backward(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                     precision: str) -> torch.Tensor:
    """Accumulate gradients of the mean loss over equal micro-batches; returns that mean loss (detached).

    Each micro-batch loss is divided by their number, so k micro-batches give the gradient of one batch k
    times larger. DDP all-reduces and FSDP2 reduce-scatters gradients only on the last micro-batch.
    """
    n = len(batches)
    total = torch.zeros((), device=device)
    for i, (x, y) in enumerate(batches):
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: earlier micro-batches keep unsharded grads
            model.set_requires_gradient_sync(i == n - 1)
        sync = nullcontext() if i == n - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, precision):
                loss = model(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            (loss / n).backward()
        total += loss.detach()
    return total / n


@dataclass
class _State:
    """What changes during a run and must survive a resume."""

    step: int = 0
    tokens: int = 0
    bad_in_row: int = 0
    guide_flops: int = 0
    skipped: int = 0
    train_s: float = 0.0
    """Seconds spent in training steps, over every session of the run (resumes included)."""
    wall_s: float = 0.0
    """Wall-clock seconds of the earlier sessions of the run (training, evaluation, checkpoints)."""


STATE_KEYS = ("step", "tokens", "bad_in_row", "skipped", "guide_flops", "rng", "loaders", "optimizer")
"""What a resume reads from a checkpoint's training state (a sharded one keeps the optimiser in its shards)."""


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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
        t = cfg.train
        self.dist = distributed.setup(t.device, timeout_minutes=t.dist_timeout_minutes)
        self.device = self.dist.device
        world = self.dist.world_size
        self.micro = t.micro_batch_size or max(1, t.global_batch_size // world)
        if t.global_batch_size % (self.micro * world):
            raise UserError(f"train.global_batch_size={t.global_batch_size} is not divisible by micro_batch_size "
                            f"x processes = {self.micro} x {world}; change one of them")
        self.accum = t.global_batch_size // (self.micro * world)
        if t.distributed == "fsdp" and t.self_guided.enabled:
            raise UserError("self-guided training is supported with train.distributed=ddp only; switch to ddp")
        # FSDP2 shards whenever there is a process group (torchrun), one process included
        self.sharded = t.distributed == "fsdp" and self.dist.launched
        self.acc = account(cfg)
        if self.acc.steps < 1:
            raise UserError(f"the token budget ({self.acc.tokens_requested} tokens) is less than one step of "
                            f"{self.acc.tokens_per_step} tokens; raise train.tokens or lower global_batch_size")
        check_fits(cfg, self.acc.params, self.micro, world, self.sharded, self.device)  # before any allocation
        if t.wandb and importlib.util.find_spec("wandb") is None:  # a setting that cannot apply, before training
            raise UserError("train.wandb=true but wandb is not installed; pip install wandb (then wandb login), "
                            "or set train.wandb=false")
        self.guidance = SelfGuidance(t.self_guided, self.acc.steps, seed=t.seed, rank=self.dist.rank)
        self.compiled = False  # whether the training step runs under torch.compile (set by _wrap)
        self.total_steps = self.guidance.total_steps
        self.run_dir = RunDir(t.out_dir)
        self._session_start = time.perf_counter()

    # ------------------------------------------------------------------ set-up
    def _log(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, file=sys.stderr, flush=True)

    def _setup_outputs(self) -> Path | None:
        """Lock the run dir, decide where to resume from; returns the checkpoint to resume or None."""
        t = self.cfg.train
        with all_or_none():  # a locked or finished out_dir ends every rank, not rank 0 alone
            if self.dist.is_main:
                self.run_dir.acquire()
                try:
                    self.run_dir.prepare(t.resume, self.overwrite)
                except BaseException:
                    self.run_dir.release()
                    raise
        if t.resume == "never":
            return None
        try:
            chosen: Path | None = None
            with all_or_none():  # rank 0 chooses for all: on lagging shared storage ranks could see other steps
                if self.dist.is_main:
                    chosen = self._newest_whole() if t.resume == "auto" else self._named_checkpoint(t.resume)
            return distributed.broadcast_path(chosen, self.device)
        except BaseException:
            if self.dist.is_main:
                self.run_dir.release()
            raise

    def _named_checkpoint(self, path: str) -> Path:
        """train.resume=PATH: that checkpoint (a run folder's newest), which must read whole."""
        ckpt = resolve_checkpoint(path)
        check_checkpoint(ckpt, STATE_KEYS)
        return ckpt

    def _newest_whole(self) -> Path | None:
        """The newest checkpoint of the run that reads whole; each newer one is skipped with its reason."""
        found = list_checkpoints(self.run_dir.path)
        skipped: list[str] = []
        for ckpt in reversed(found):
            if old_format(ckpt):
                refuse_old_format(ckpt)
            try:
                check_checkpoint(ckpt, STATE_KEYS)
            except UserError as e:
                skipped.append(f"{ckpt.name}: {e}")
                continue
            for line in skipped:  # said only when the run goes on; otherwise the error below says it
                self._log(f"resume: skipping {line}")
            if skipped:
                self._log(f"resume: continuing from {ckpt.name}, the newest checkpoint that reads whole")
            return ckpt
        if skipped:
            raise UserError(f"no checkpoint in {self.run_dir.path / 'checkpoints'} reads whole (newest "
                            f"{skipped[0]}); move them away to keep them, or pass --overwrite to start over")
        return None

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

    def _build_optimizer(self, model: Transformer) -> torch.optim.Optimizer:
        from lowrank_lm.train.optim import build_adamw

        t = self.cfg.train
        # Standard: one group, weight decay on every parameter (embeddings, biases and norms too), as the paper
        # does. muP: a learning-rate multiplier and weight decay per parameter (lowrank_lm.mup), in model order.
        return build_adamw(model, t.lr, t.betas, t.eps, t.weight_decay, fused=self.device.type == "cuda")

    def _wrap(self, model: Transformer) -> nn.Module:
        t = self.cfg.train
        wrapped: nn.Module = model
        if self.dist.launched and t.distributed == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # a guide may sit out a micro-batch (stochastic FLOP reduction): DDP must tolerate unused params
            wrapped = DDP(model, device_ids=ids, find_unused_parameters=bool(SelfGuidance.guides(model)))
        # guided too: the guides' coins are tensors that torch.cond branches on (train.self_guided); but torch
        # 2.13 cannot compile a torch.cond inside an activation-checkpointed block (pytorch/pytorch#162246), so
        # those steps stay eager
        coins_in_checkpoints = (bool(SelfGuidance.guides(model)) and t.self_guided.reduce_flop
                                and t.activation_checkpointing)
        self.compiled = use_compile(t.compile, self.device) and not coins_in_checkpoints and not failed(COMPILED)
        if use_compile(t.compile, self.device) and coins_in_checkpoints:
            self._log("torch.compile waits for the end of guidance: the guides' coins (reduce_flop) cannot be "
                      "compiled under activation checkpointing")
        if self.compiled:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _step_or_eager(self, train_model: nn.Module, model: Transformer, optimizer: torch.optim.Optimizer,
                       batches: list) -> tuple[torch.Tensor, nn.Module]:
        """forward_backward on the compiled step; if compiling or running it fails (a compiler or driver problem,
        e.g. torch.cond self-guidance on some GPU), warn once, drop the step's gradients and run the same step
        eagerly from then on. Returns (mean loss, the model to train from now on)."""
        t = self.cfg.train
        if not self.compiled:
            return forward_backward(train_model, batches, self.device, t.precision), train_model
        try:
            loss = forward_backward(train_model, batches, self.device, t.precision)
        except Exception as e:  # a genuine error (out of memory) recurs eagerly and is raised from there
            fell_back(COMPILED, e)
            optimizer.zero_grad(set_to_none=True)
            train_model = self._wrap(model)  # eager now: failed(COMPILED)
            return forward_backward(train_model, batches, self.device, t.precision), train_model
        ran(COMPILED)
        return loss, train_model

    # ------------------------------------------------------------------ checkpoints
    def _save(self, model: Transformer, optimizer: torch.optim.Optimizer, loaders: dict, st: _State) -> None:
        state = {"rng": _rng_state(self.device), "step": st.step, "tokens": st.tokens,
                 "bad_in_row": st.bad_in_row, "skipped": st.skipped, "train_s": st.train_s,
                 "wall_s": st.wall_s + time.perf_counter() - self._session_start,
                 "guide_flops": self._guide_flops(model, st),  # collective: every rank gets here
                 # the global stream position: the same on every rank, and valid for any number of ranks
                 "loaders": {k: v.state_dict() for k, v in loaders.items()}}
        meta = {"tokens": st.tokens, "total_steps": self.total_steps, "world_size": self.dist.world_size}
        if self.sharded:  # FSDP: every rank writes its own shards (torch.distributed.checkpoint)
            from lowrank_lm.checkpoint import save_sharded_checkpoint

            save_sharded_checkpoint(self.run_dir.path, st.step, model, optimizer, self.cfg, state, meta,
                                    agree=all_or_none)
            with all_or_none():
                if self.dist.is_main:
                    prune_checkpoints(self.run_dir.path, self.cfg.train.keep_checkpoints)
        else:
            with all_or_none():  # a failed write (a full disk) ends every rank with its one line
                if self.dist.is_main:
                    self._write_checkpoint(model_state(model), {**state, "optimizer": optimizer.state_dict()},
                                           meta, st)
        self._last_save = time.perf_counter()

    def _write_checkpoint(self, weights: dict, state: dict, meta: dict, st: _State) -> None:
        # any writer's failure (a full disk: OSError, SafetensorError, RuntimeError) is one line, exit 2
        writing(self.run_dir.path, st.step,
                lambda: save_checkpoint(self.run_dir.path, st.step, weights, self.cfg, state, meta=meta))
        prune_checkpoints(self.run_dir.path, self.cfg.train.keep_checkpoints)

    def _guide_flops(self, model: Transformer, st: _State) -> int:
        """Guide FLOPs of the whole run so far, summed over all ranks (each counts its own tokens)."""
        tokens = distributed.all_reduce_ints(self.guidance.guided_tokens(), self.device)
        return st.guide_flops + SelfGuidance.guide_flops(model, tokens)

    def _check_model_config(self, ckpt: Path) -> None:
        saved = load_config(ckpt / "config.yaml")
        if saved.model != self.cfg.model:
            raise UserError(f"checkpoint {ckpt} was trained with another model config; use the same model "
                            "settings, train.resume=never, or another train.out_dir")

    def _load_weights(self, model: Transformer, ckpt: Path) -> None:
        """Weights of an unsharded checkpoint, into the model before it is wrapped or sharded."""
        from safetensors.torch import load_file

        model.load_state_dict(load_file(ckpt / "model.safetensors"), strict=True)

    def _load_optimizer(self, model: Transformer, optimizer: torch.optim.Optimizer, ckpt: Path,
                        state: dict[str, Any]) -> None:
        """Optimiser state (from a sharded checkpoint the weights too), whatever the world size either side."""
        from lowrank_lm.checkpoint import load_sharded, optimizer_state_by_name

        if is_sharded(ckpt):
            load_sharded(ckpt, model, optimizer, state)
        elif self.sharded or isinstance(next(iter(state["optimizer"]["state"]), 0), str):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            # a full state (one process, DDP, or FSDP before sharded checkpoints), sharded as it loads
            by_name = optimizer_state_by_name(model, state["optimizer"], optimizer)
            set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunSummary | StoppedRun:
        data_dir = self._setup_data()  # data problems surface before anything is written to out_dir
        ckpt = self._setup_outputs()
        previous = self._catch_stop_signals()
        try:
            return self._run(data_dir, ckpt)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.dist.is_main:
                self.run_dir.release()

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

    def _checkpoint_due(self) -> bool:
        """train.checkpoint_minutes have passed since the last checkpoint (rank 0's clock decides for all)."""
        minutes = self.cfg.train.checkpoint_minutes
        return bool(self.dist.is_main and minutes and time.perf_counter() - self._last_save >= 60 * minutes)

    def _run(self, data_dir: Path, ckpt: Path | None) -> RunSummary | StoppedRun:
        from lowrank_lm.data import TokenLoader

        cfg, t, d = self.cfg, self.cfg.train, self.dist
        torch.manual_seed(t.seed)
        model = Transformer(cfg.model)
        model.loss_chunk_tokens = t.loss_chunk_tokens
        st = _State()
        state: dict[str, Any] | None = None
        if ckpt is not None:
            with all_or_none():  # an unreadable checkpoint ends every rank alike
                state = load_state(ckpt, STATE_KEYS)
            st.step, st.tokens = int(state["step"]), int(state["tokens"])
            st.bad_in_row, st.skipped = int(state["bad_in_row"]), int(state["skipped"])
            st.guide_flops = int(state["guide_flops"])
            st.train_s = float(state.get("train_s", 0.0))  # absent in checkpoints of the first release
            st.wall_s = float(state.get("wall_s", 0.0))
            if self.max_steps is not None and st.step >= self.max_steps:  # no step to take, no checkpoint to write
                raise said_once(UserError(f"--max-steps {self.max_steps}: the run is already at step {st.step} "
                                          f"({ckpt}); give a larger --max-steps to continue it"))
        self.guidance.attach(model, st.step)
        if ckpt is not None:
            with all_or_none():
                self._check_model_config(ckpt)
                if not is_sharded(ckpt):
                    self._load_weights(model, ckpt)
        model.to(self.device)
        model.activation_checkpointing = t.activation_checkpointing
        if self.sharded:
            distributed.shard_fsdp(model, t.precision)
        optimizer = self._build_optimizer(model)
        loaders = {
            "train": TokenLoader(data_dir, "train", cfg.model.seq_len, self.micro, t.seed, d.rank, d.world_size),
            # fixedflop self-guidance re-reads the first batches at the end: a second reader from position 0
            "replay": TokenLoader(data_dir, "train", cfg.model.seq_len, self.micro, t.seed, d.rank, d.world_size),
        }
        if state is not None:
            with all_or_none():  # a sharded checkpoint's weights come in here too (collective)
                self._load_optimizer(model, optimizer, ckpt, state)
            for k, v in loaders.items():
                v.load_state_dict(state["loaders"][k])
            _set_rng_state(state["rng"], self.device)
        train_model = self._wrap(model)

        logger = None
        if d.is_main:
            self.provenance = collect_provenance(data_dir)
            self.run_dir.write_config(cfg, self.provenance)
            copy_tokenizer(Path(data_dir), self.run_dir.path)
            logger = MetricsLogger(self.run_dir.path, st.step if ckpt is not None else None, t.wandb,
                                   config_to_dict(cfg))
        acc = self.acc
        attn = f", {cfg.model.attn.kind} attention" if cfg.model.attn.kind != registry.DENSE else ""
        self._log(f"training {acc.params / 1e6:.2f}M params ({cfg.model.ffn.kind} FFN{attn}) on {self.device} x "
                  f"{d.world_size}: {acc.train_tokens:,} tokens = {acc.steps} steps x {acc.tokens_per_step} tokens"
                  + (f" + {self.guidance.extra_steps} replayed steps" if self.guidance.extra_steps else "")
                  + f", {acc.train_flops:.3e} training FLOPs (paper convention); micro-batch {self.micro} x "
                  f"{self.accum} accumulation; {t.precision}" + (f"; resuming at step {st.step}" if ckpt else ""))

        peak = resolve_peak_flops(self.device, t.peak_tflops)
        stop_at = self.total_steps if self.max_steps is None else min(self.total_steps, self.max_steps)
        progress = self._progress(st.step, stop_at)
        self._stopped_by, self._last_save = "max_steps", time.perf_counter()
        window_tokens, window_time = 0, 0.0
        started = time.perf_counter()
        last_eval: dict[str, Any] | None = None
        while st.step < stop_at:
            step = st.step
            if self.guidance.active(step):
                self.guidance.set_step(model, step)
            lr = lr_at(step, self.total_steps, t.lr, t.warmup_ratio, t.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loader = loaders["replay" if self.guidance.is_replay(step) else "train"]
            t0 = time.perf_counter()
            batches = [loader.next_batch() for _ in range(self.accum)]
            loss_t, train_model = self._step_or_eager(train_model, model, optimizer, batches)
            if self.guidance.active(step) and t.self_guided.reduce_flop and self.compiled:
                self.guidance.clear_skipped_grads(lambda used: distributed.all_reduce_ints(used, self.device))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                             t.grad_clip if t.grad_clip > 0 else float("inf")))
            # one collective for the loss, a stop request (a signal on any rank stops all ranks together) and
            # rank 0's wall-clock checkpoint cadence
            loss_sum, stops, due = distributed.all_reduce_sum(
                [float(loss_t), float(self._stop_signal is not None), float(self._checkpoint_due())], self.device)
            loss = loss_sum / d.world_size
            finite = math.isfinite(loss) and math.isfinite(grad_norm)
            if finite:
                optimizer.step()
                st.bad_in_row = 0
            else:
                st.bad_in_row += 1
                st.skipped += 1
            optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            st.train_s += dt
            window_time += dt
            window_tokens += acc.tokens_per_step
            st.step += 1
            st.tokens += acc.tokens_per_step
            crash_point("train.step")
            if self.guidance.guided_steps and st.step == self.guidance.guided_steps:
                optimizer, train_model = self._end_guidance(model, optimizer)
            if not finite:
                self._log(f"step {step}: non-finite loss or gradient norm ({loss}, {grad_norm}); step skipped")
                if logger:
                    logger.log({"step": st.step, "skipped": True, "loss": loss, "grad_norm": grad_norm})
                if st.bad_in_row >= t.max_bad_steps:
                    last = list_checkpoints(self.run_dir.path)
                    where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written"
                    raise said_once(UserError(f"stopped after {st.bad_in_row} non-finite steps in a row at step "
                                              f"{st.step}; {where}; lower train.lr or check the data"))
                continue
            log_now = st.step % t.log_interval == 0 or st.step == stop_at
            if log_now:
                rec = {"step": st.step, "tokens": st.tokens, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                       **throughput(window_tokens, window_time, d.world_size, acc.flops_per_token, peak),
                       "elapsed_s": time.perf_counter() - started}
                if self.guidance.active(step):
                    rec["guide_alpha"] = self.guidance.alpha(step)
                window_tokens, window_time = 0, 0.0
                if logger:
                    logger.log(rec)
                self._show(progress, rec, stop_at)
            if t.eval_interval and st.step % t.eval_interval == 0 and st.step < self.total_steps:
                last_eval = self._eval(model, data_dir, logger, st)
            at_interval = (t.checkpoint_interval and st.step % t.checkpoint_interval == 0) or due
            if stops and st.step < stop_at:  # preempted: checkpoint this step and leave, resumable
                self._stopped_by = self._stop_signal or "a signal on another rank"
                again = " (Ctrl-C again to abort at once)" if self._stop_signal == "SIGINT" else ""
                self._log(f"received {self._stop_signal or 'a stop request'}: checkpoint at step {st.step}, "
                          f"exiting{again}")
                stop_at = st.step
            if at_interval or st.step == stop_at:
                self._save(model, optimizer, loaders, st)
        if progress is not None:
            progress.close()
        if st.step < self.total_steps:  # stopped by max_steps or a signal: resumable, not finished
            if logger:
                logger.close()
            return StoppedRun(steps=st.step, total_steps=self.total_steps, stopped_by=self._stopped_by,
                              run_dir=str(self.run_dir.path))
        if last_eval is None or last_eval.get("step") != st.step:
            last_eval = self._eval(model, data_dir, logger, st)
        summary = self._summary(model, st, last_eval)
        if d.is_main:
            summary.write(self.run_dir.summary)
            if logger:
                logger.close()
            self._log(_format_summary(summary))
            plot = write_run_plot(self.run_dir.path)  # RUN/loss.png, when matplotlib is installed
            if plot is not None:
                self._log(f"loss plot: {plot}")
        return summary

    def _end_guidance(self, model: Transformer, optimizer: torch.optim.Optimizer):
        """Guidance over: drop the guides from the model and the optimiser (and re-wrap for DDP)."""
        guides = {id(p) for p in SelfGuidance.guides(model)}
        self.guidance.detach(model)
        kept = [p for p in model.parameters()]
        fresh = self._build_optimizer(model)
        for p in kept:
            if p in optimizer.state:
                fresh.state[p] = optimizer.state[p]
        assert not any(id(p) in guides for p in kept)
        self._log(f"self-guided training: guidance ended at step {self.guidance.guided_steps}; guides dropped")
        return fresh, self._wrap(model)

    def _eval(self, model: Transformer, data_dir: Path, logger: MetricsLogger | None, st: _State) -> dict:
        t = self.cfg.train
        shown = EvalProgress(validation_size(data_dir, self.cfg.model.seq_len, t.eval_tokens), self._log,
                             enabled=self.dist.is_main)
        res = evaluate(model, data_dir, self.cfg.model.seq_len, self.micro, self.device, t.precision,
                       t.eval_tokens, self.dist.rank, self.dist.world_size, progress=shown)
        shown.close()
        rec = {"step": st.step, "tokens": st.tokens, "val_loss": res["loss"], "val_ppl": res["ppl"],
               "val_tokens": res["tokens"]}
        if logger:
            logger.log(rec)
        self._log(f"step {st.step}: val loss {res['loss']:.4f}, ppl {res['ppl']:.2f} ({res['tokens']:,} tokens)")
        return rec

    def _summary(self, model: Transformer, st: _State, last_eval: dict) -> RunSummary:
        acc, cfg = self.acc, self.cfg
        summary = RunSummary(
            name=self.run_dir.path.name, structure=cfg.model.ffn.kind, params=acc.params,
            params_non_embedding=acc.params_non_embedding, params_ffn=acc.params_ffn,
            tokens=st.tokens, unique_tokens=acc.train_tokens, steps=st.step,
            train_flops=acc.train_flops, train_s=st.train_s,
            wall_s=st.wall_s + time.perf_counter() - self._session_start,
            tokens_per_s=st.tokens / max(st.train_s, 1e-9), skipped_steps=st.skipped,
            peak_memory_mb=_peak_memory_mb(self.device), device=str(self.device),
            world_size=self.dist.world_size, precision=cfg.train.precision,
            final_val_loss=last_eval["val_loss"], final_val_ppl=last_eval["val_ppl"],
            val_tokens=last_eval["val_tokens"], provenance=self.provenance,
        )
        if self.guidance.guided_steps:
            guide_flops = self._guide_flops(model, st)  # collective: every rank computes the summary
            struct = self.total_steps * acc.tokens_per_step * acc.flops_per_token
            dense = account(replace(cfg, model=replace(cfg.model, ffn=replace(cfg.model.ffn, kind=registry.DENSE),
                                                       attn=replace(cfg.model.attn, kind=registry.DENSE))))
            summary = summary.replace(guided_steps=self.guidance.guided_steps, guide_flops=guide_flops,
                                      train_flops=struct + guide_flops,
                                      flop_ratio_to_dense=(struct + guide_flops) / dense.train_flops)
        return summary

    def _progress(self, start: int, stop: int) -> TrainProgress:
        watch = CoreWatch(torch.get_num_threads()) if self.dist.is_main and self.device.type == "cpu" else None
        return TrainProgress(start, stop, self._log, enabled=self.dist.is_main, watch=watch)

    def _show(self, progress: TrainProgress, rec: dict, stop: int) -> None:
        progress.update(rec)

def _format_summary(s: RunSummary) -> str:
    return (f"done: {s.tokens:,} tokens in {s.wall_s:.1f}s ({s.tokens_per_s:,.0f} tok/s in training steps), "
            f"peak memory {s.peak_memory_mb:.0f} MB, final val loss {s.final_val_loss:.4f} "
            f"ppl {s.final_val_ppl:.2f}")


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
