"""What a person watching a run sees: progress of training and of long evaluations, and busy cores.

On a terminal, a tqdm bar with its ETA. Piped or logged (not a terminal), one line per log step with
step/total, percentage, loss, tokens/s, elapsed time and ETA; an evaluation that runs longer than a
few seconds logs its own progress lines. A CPU run also warns, once, when other processes keep the
cores busy (the check ``bench`` makes), since every step then runs several times slower.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

Log = Callable[[str], None]


def format_duration(seconds: float) -> str:
    """45s, 3m05s, 2h07m: short enough for a log line, exact enough for an ETA."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(done: float, total: float, elapsed: float) -> float | None:
    """Time left at the rate so far; None before anything is done."""
    if done <= 0 or elapsed <= 0:
        return None
    return elapsed / done * max(0.0, total - done)


def train_line(rec: dict[str, Any], start: int, total: int, elapsed: float) -> str:
    """The log line of a training step: ``step 120/400 (30%)  loss ...  lr ...  tok/s  elapsed  ETA``."""
    step = rec["step"]
    eta = eta_seconds(step - start, total - start, elapsed)
    return (f"step {step}/{total} ({100 * step / total:.0f}%)  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
            f"{rec['tokens_per_s']:,.0f} tok/s  elapsed {format_duration(elapsed)}  "
            f"ETA {format_duration(eta) if eta is not None else '?'}")


def eval_line(done: int, total: int, elapsed: float) -> str:
    """The log line of an evaluation under way: ``evaluating: 26,214/65,536 tokens (40%)  elapsed  ETA``."""
    eta = eta_seconds(done, total, elapsed)
    return (f"evaluating: {done:,}/{total:,} tokens ({100 * done / max(total, 1):.0f}%)  "
            f"elapsed {format_duration(elapsed)}  ETA {format_duration(eta) if eta is not None else '?'}")


def others_busy(interval: float = 0.5) -> float | None:
    """Cores that other processes keep busy, measured while this process works (None without /proc/stat)."""
    from lowrank_lm.contention import busy_cores

    wall, cpu = time.perf_counter(), time.process_time()
    busy = busy_cores(interval)
    if busy is None:
        return None
    # busy_cores counts this process too, and here it is busy training: subtract what it used meanwhile.
    own = (time.process_time() - cpu) / max(time.perf_counter() - wall, 1e-9)
    return max(0.0, busy - own)


def _is_terminal() -> bool:
    return sys.stderr.isatty()


class CoreWatch:
    """Samples /proc/stat in a background thread while the run sets up; :meth:`warning` gives the one-line
    warning when other processes keep too many cores busy for our ``threads``, once, when it is known."""

    def __init__(self, threads: int, sample: Callable[[], float | None] | None = None) -> None:
        self.threads = threads
        self._others: float | None = None
        self._said = False
        self._thread = threading.Thread(target=self._run, args=(sample or others_busy,), daemon=True)
        self._thread.start()

    def _run(self, sample: Callable[[], float | None]) -> None:
        self._others = sample()

    def warning(self, wait: float = 0.0) -> str | None:
        """The warning (once), or None: the cores are free, the sample is not in yet, or it was said."""
        if wait:
            self._thread.join(wait)
        if self._said or self._thread.is_alive() or self._others is None:
            return None
        from lowrank_lm.contention import contention_warning

        self._said = True
        return contention_warning(self._others, os.cpu_count() or 1, self.threads,
                                  "this run will be several times slower than on an idle machine")


class TrainProgress:
    """Training progress from step ``start`` to ``total``: a tqdm bar on a terminal, log lines otherwise."""

    def __init__(self, start: int, total: int, log: Log, enabled: bool = True, watch: CoreWatch | None = None,
                 terminal: bool | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.start, self.total, self.log, self.enabled = start, total, log, enabled
        self.watch, self.clock = watch, clock
        self.began = clock()
        self.bar = None
        if enabled and (terminal if terminal is not None else _is_terminal()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, rec: dict[str, Any]) -> None:
        """Show a logged training step (a metrics record with step, loss, lr and tokens_per_s)."""
        if not self.enabled:
            return
        self._warn()
        if self.bar is not None:
            self.bar.n = rec["step"]
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}", refresh=True)
        else:
            self.log(train_line(rec, self.start, self.total, self.clock() - self.began))

    def _warn(self) -> None:
        message = self.watch.warning() if self.watch is not None else None
        if message:
            (self.bar.write if self.bar is not None else self.log)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EvalProgress:
    """Progress of one evaluation over ``total`` tokens, shown only when it runs longer than ``after`` s:
    then a tqdm bar on a terminal, or a log line every ``every`` s otherwise. Call it with tokens done."""

    def __init__(self, total: int, log: Log, enabled: bool = True, after: float = 5.0, every: float = 10.0,
                 terminal: bool | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.log, self.enabled, self.clock = total, log, enabled, clock
        self.after, self.every = after, every
        self.terminal = terminal if terminal is not None else _is_terminal()
        self.began = clock()
        self.next_line = self.began + max(after, every)
        self.bar = None

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self.terminal:
            if self.bar is None and now - self.began >= self.after:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, unit="tok", unit_scale=True, desc="evaluating", leave=False,
                                dynamic_ncols=True, file=sys.stderr)
            if self.bar is not None:
                self.bar.update(done - self.bar.n)
        elif now >= self.next_line:
            self.log(eval_line(done, self.total, now - self.began))
            self.next_line = now + self.every

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
