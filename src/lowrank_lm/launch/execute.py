"""Running a sweep: the state of each run, one run after another, the progress view, the results table.

A run's state is read from its folder, never from a separate sweep database, so it is right even after
a crash, a reboot, or runs started by hand:

* done: ``summary.json`` exists (the trainer writes it last, only when the run finished);
* running: another process holds the trainer's lock on the folder (e.g. another shard);
* interrupted: complete checkpoints but no summary; ``train.resume=auto`` continues from the newest;
* failed: the last attempt from a sweep exited with an error (``sweep-failed.json``); retried next time;
* pending: nothing yet.

Runs are jobs of submitit's executors: its local executor here (``sweep --executor local``, the default:
:mod:`lowrank_lm.launch.local`) and Slurm (``--executor submitit``: :mod:`lowrank_lm.launch.submit`). What
stays here beside them is the sweep's bookkeeping (states, results table, progress view) and ONE runner of
our own, :func:`execute` with a runner callable in this process: ``sweep --in-process`` (debugging) and the
tests' fake trainers. submitit cannot serve that case: its local executor pickles the callable into a child
process (a fake trainer's record of its calls, or a debugger's breakpoint, stays there), and its in-process
executor (``DebugExecutor``) opens ``pdb.post_mortem`` on any exception of a job, which would stop a sweep
at an interactive prompt where a failed run must be recorded and the next one started.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lowrank_lm.atomic import write_json_atomic
from lowrank_lm.config import save_config
from lowrank_lm.errors import UserError
from lowrank_lm.launch.job_record import JOB_RECORD
from lowrank_lm.launch.sweep import RunSpec, SweepPlan, config_differences, shard_runs
from lowrank_lm.locks import held as lock_held
from lowrank_lm.locks import is_held
from lowrank_lm.ownership import Ownership
from lowrank_lm.resolve import load_config
from lowrank_lm.stats.table import RESULT_COLUMNS, write_csv, write_json
from lowrank_lm.tables import text_table
from lowrank_lm.train.rundir import LOCK as LOCK_NAME  # the run-folder layout is the trainer's (no torch)
from lowrank_lm.train.rundir import METRICS as METRICS_NAME
from lowrank_lm.train.rundir import SUMMARY, run_ownership
from lowrank_lm.train.summary import RunSummary

FAILED_MARKER = "sweep-failed.json"  # these two and job.json: lowrank_lm.train.rundir.SWEEP_FILES
LOG_NAME = "train.log"
RESULTS_LOCK = ".results.lock"
SWEEP_RECORD = ".lowrank-lm-sweep.json"
JOBS_DIR = "jobs"
"""submitit's folders (job scripts, pickles, job logs) go to OUT_DIR/jobs/<job id>/."""


@dataclass
class RunState:
    """Where one run stands (see the module docstring for the statuses)."""

    status: str
    step: int | None = None
    total_steps: int | None = None
    summary: RunSummary | None = None
    """The finished run's record (status done)."""
    error: str | None = None
    tokens: int | None = None
    """Tokens trained so far (the newest checkpoint's, or the newest logged step's while running)."""


def _locked(run_dir: Path) -> bool:
    """True when another process holds the trainer's lock on ``run_dir``."""
    return is_held(run_dir / LOCK_NAME)


def _newest_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """meta.json of the newest complete checkpoint (the trainer's layout), or None."""
    from lowrank_lm.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    if not found:
        return None
    try:
        return json.loads((found[-1] / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _last_logged_step(run_dir: Path) -> dict[str, Any] | None:
    """The newest training record of metrics.jsonl (read from its end), or None."""
    try:
        with (run_dir / METRICS_NAME).open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # the first line of the window may be cut, the last one half-written
        if isinstance(rec, dict) and "step" in rec and "tokens" in rec:
            return rec
    return None


def run_state(spec: RunSpec) -> RunState:
    """Read the state of one run from its folder."""
    d = spec.run_dir
    summary = d / SUMMARY
    if summary.is_file():
        try:
            s = RunSummary.read(summary)  # typed: a missing field is named here, not an empty column
        except UserError as e:
            return RunState("failed", error=str(e))
        return RunState("done", step=s.steps, total_steps=s.steps, summary=s, tokens=s.tokens)
    if _locked(d):
        rec = _last_logged_step(d) or {}
        return RunState("running", step=rec.get("step"), total_steps=spec.steps, tokens=rec.get("tokens"))
    meta = _newest_checkpoint(d) if d.is_dir() else None
    if meta is not None:
        return RunState("interrupted", step=meta.get("step"), total_steps=meta.get("total_steps") or spec.steps,
                        tokens=meta.get("tokens"))
    marker = d / FAILED_MARKER
    if marker.is_file():
        try:
            error = json.loads(marker.read_text()).get("error")
        except ValueError:
            error = "unknown"
        return RunState("failed", error=error)
    return RunState("pending")


# --------------------------------------------------------------------------- runners


class RunFailed(Exception):
    """A run ended without finishing; the message says why and where its log is."""


Runner = Callable[[RunSpec], None]
"""Trains one run to completion from its config (resuming from checkpoints); raises RunFailed."""


def last_line(log: Path, start: int = 0) -> str | None:
    """The last non-empty line written to ``log`` after byte ``start``."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(start, fh.seek(0, os.SEEK_END) - 8192))
            lines = [x.strip() for x in fh.read().decode("utf-8", "replace").splitlines() if x.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


class InProcessRunner:
    """Train in this process with :func:`lowrank_lm.train.run_training` (``sweep --in-process``: debugging, no
    isolation; the other runs are submitit jobs, see the module docstring)."""

    def __call__(self, spec: RunSpec) -> None:
        from lowrank_lm.train import run_training  # the trainer is heavy: imported only when a run starts

        try:
            summary = run_training(spec.cfg)
        except UserError as e:
            raise RunFailed(str(e)) from None
        if not summary.finished:  # Ctrl-C or a signal: checkpointed; the sweep stops here
            raise KeyboardInterrupt


# --------------------------------------------------------------------------- results


def _corpus_train_tokens(spec: RunSpec, cache: dict[str, int | None]) -> int | None:
    """Training tokens of the run's prepared data (for epochs), or None when the data is not prepared yet."""
    key = json.dumps([spec.cfg.data.source, spec.cfg.data.tokenizer, spec.cfg.data.dir, spec.cfg.data.val_tokens,
                      spec.cfg.data.max_tokens])
    if key not in cache:
        try:
            from lowrank_lm.data import load_manifest, resolve_data_dir

            cache[key] = int(load_manifest(resolve_data_dir(spec.cfg.data)).tokens["train"])
        except (ImportError, UserError, OSError, KeyError, ValueError, TypeError):
            cache[key] = None  # display-only: epochs stay unknown until the data has been prepared
    return cache[key]


def result_row(spec: RunSpec, state: RunState, corpus: dict[str, int | None] | None = None) -> dict[str, Any]:
    """The results-table row of one run: the plan, and what the finished run measured."""
    row = spec.row()
    row["lr"] = spec.cfg.train.lr  # the peak learning rate: an axis of the data, as the budget is
    row["status"] = state.status
    s = state.summary
    if state.status == "done" and s is not None:
        row.update(loss=s.final_val_loss, ppl=s.final_val_ppl, tokens=s.tokens, tokens_per_s=s.tokens_per_s,
                   wall_s=s.wall_s, steps=s.steps)
        if s.train_flops:
            row["flops"] = s.train_flops  # includes self-guided guide FLOPs when there are any
    n = _corpus_train_tokens(spec, corpus if corpus is not None else {})
    row["epochs"] = round(row["tokens"] / n, 3) if n else None
    return row


def write_results(plan: SweepPlan, states: dict[str, RunState]) -> list[dict[str, Any]]:
    """Write results.csv (finished runs: what ``fit`` reads) and results.json (every run, with status).

    Jobs on a cluster finish at any time and each rewrites the table: one writer at a time (a lock file
    in the sweep's folder), and a run not yet done in ``states`` is read again, so a writer that looked
    earlier never drops a run another one has just added.
    """
    claim_sweep_dir(plan)
    with lock_held(plan.out_dir / RESULTS_LOCK):
        corpus: dict[str, int | None] = {}
        fresh = {r.name: states[r.name] if states[r.name].status == "done" else run_state(r) for r in plan.runs}
        rows = [result_row(r, fresh[r.name], corpus) for r in plan.runs]
        write_csv([r for r in rows if r["status"] == "done"], plan.results_csv, RESULT_COLUMNS)
        write_json({"sweep": plan.name, "file": str(plan.path), "runs": rows}, plan.results_json)
    return rows


def refresh_results(sweep_file: str | Path) -> None:
    """Rewrite a sweep's results table from its run folders (what a finishing job calls)."""
    from lowrank_lm.launch.sweep import load_sweep

    plan = load_sweep(sweep_file)
    write_results(plan, {r.name: run_state(r) for r in plan.runs})


# --------------------------------------------------------------------------- progress view


def _fmt_count(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def remaining_seconds(runs: list[RunSpec], states: dict[str, RunState]) -> float | None:
    """A rough estimate for the unfinished ``runs``: their FLOPs at the median FLOP rate of finished runs."""
    rates = sorted(s.summary.train_flops / s.summary.wall_s for s in states.values()
                   if s.summary is not None and s.summary.train_flops and s.summary.wall_s)
    if not rates:
        return None
    rate = rates[len(rates) // 2]
    left = 0.0
    for r in runs:
        st = states[r.name]
        if st.status == "done":
            continue
        frac = 1.0
        if st.status == "interrupted" and st.step is not None and st.total_steps:
            frac = max(0.0, 1 - st.step / st.total_steps)
        left += frac * r.flops
    return left / rate


def _progress_text(state: RunState) -> str:
    if state.step is None or state.status == "pending":
        return ""
    tokens = f" ({_fmt_count(state.tokens)} tok)" if state.tokens is not None else ""
    return f"{state.step}/{state.total_steps}{tokens}"


def progress_view(plan: SweepPlan, states: dict[str, RunState], mine: list[RunSpec] | None = None,
                  jobs: tuple[list[str], dict[str, list[str]]] | None = None) -> str:
    """The whole sweep at a glance: counts, one line per run, failures with their last line, the time left.

    ``jobs``: extra columns from the scheduler (their headers, and the values per run name).
    """
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s.status] = counts.get(s.status, 0) + 1
    order = ("done", "running", "interrupted", "failed", "pending")
    head = f"sweep {plan.name} ({plan.path}): {len(plan.runs)} runs, " + ", ".join(
        f"{counts[k]} {k}" for k in order if counts.get(k))
    mine_names = {r.name for r in mine} if mine is not None else None
    job_header, job_cells = jobs if jobs is not None else ([], {})
    header = ["run", "series", "params", "tokens", "FLOPs", "status", "progress (steps)", "val loss", "ppl",
              "tok/s", "wall", *job_header]
    rows = []
    for r in plan.runs:
        st = states[r.name]
        s = st.summary
        mark = "" if mine_names is None or r.name in mine_names else " (other shard)"
        rows.append([r.name, r.series, _fmt_count(r.params), _fmt_count(r.tokens), f"{r.flops:.3g}",
                     st.status + mark, _progress_text(st),
                     f"{s.final_val_loss:.4f}" if s else "",
                     f"{s.final_val_ppl:.2f}" if s else "",
                     _fmt_count(s.tokens_per_s) if s else "",
                     _fmt_time(s.wall_s) if s else "",
                     *job_cells.get(r.name, [""] * len(job_header))])
    lines = [head, text_table(header, rows, indent="  ")]
    lines += [f"  {r.name} failed: {states[r.name].error}" for r in plan.runs
              if states[r.name].status == "failed" and states[r.name].error]
    left = remaining_seconds(mine if mine is not None else plan.runs, states)
    if left is not None and left > 0:
        lines.append(f"estimated time left{' for this shard' if mine is not None else ''}: about {_fmt_time(left)} "
                     "(at the median FLOP rate of the finished runs; small models run at a lower rate)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- execution


@dataclass
class SweepOutcome:
    """What one invocation did: finished, skipped (already done or running elsewhere), failed runs."""

    finished: list[str]
    skipped: list[str]
    failed: list[str]
    unfinished: list[str]

    @property
    def exit_code(self) -> int:
        return 0 if not self.failed and not self.unfinished else 1


def claim_sweep_dir(plan: SweepPlan) -> None:
    """Claim the sweep's folder for its results, lock, job folders and run folders (all runs of the plan, so
    that shards claiming at once write the same record); a folder the sweep did not write is refused."""
    names = {plan.results_csv.name, plan.results_json.name, RESULTS_LOCK, JOBS_DIR, *(r.name for r in plan.runs)}

    def only_ours(folder: Path) -> set[str] | None:
        # a folder of an older version, or run folders made by hand: nothing in it but what this sweep writes,
        # and a results table only beside the results.json of a sweep (the two were always written together)
        if not all(p.name in names for p in folder.iterdir()):
            return None
        if plan.results_csv.exists() or plan.results_json.exists():
            try:
                record = json.loads(plan.results_json.read_text())
                if not (isinstance(record, dict) and {"sweep", "runs"} <= set(record)):
                    return None
            except (OSError, ValueError):
                return None
        return names

    Ownership(plan.out_dir, SWEEP_RECORD, "lowrank-lm sweep", only_ours).claim(
        names, "set another out_dir in the sweep file (a new or empty folder, or this sweep's own)")


def check_existing(runs: list[RunSpec]) -> None:
    """Refuse to reuse a run folder whose config computes something else than the plan says, or a folder
    that is not a run's."""
    for r in runs:
        run_ownership(r.run_dir).check(f"move it away, or set another out_dir in the sweep file than "
                                       f"{r.run_dir.parent}")
        if not r.config_path.is_file():
            continue
        try:
            existing = load_config(r.config_path)
        except UserError as e:
            raise UserError(f"{r.config_path} cannot be read ({e}); remove the folder {r.run_dir} to redo the run") \
                from None
        diff = config_differences(existing, r.cfg)
        if diff:
            raise UserError(f"{r.run_dir} was made with another config ({', '.join(diff[:4])} differ); remove it, or "
                            "set another out_dir in the sweep file")


def write_run_config(spec: RunSpec) -> None:
    """Create the run folder with the run's config (kept if already there: check_existing vetted it)."""
    run_ownership(spec.run_dir).claim({spec.config_path.name, FAILED_MARKER, LOG_NAME, JOB_RECORD},
                                      "move it away, or set another out_dir in the sweep file")
    if not spec.config_path.is_file():
        save_config(spec.cfg, spec.config_path)


class _Sweep:
    """One invocation's bookkeeping: the states, the runs to do, what became of them."""

    def __init__(self, plan: SweepPlan, states: dict[str, RunState], todo: list[RunSpec], out: TextIO,
                 stop_on_error: bool):
        self.plan, self.states, self.todo, self.out = plan, states, todo, out
        self.stop_on_error = stop_on_error
        self.outcome = SweepOutcome([], [], [], [])
        self.stop = False
        """Set after a failure with stop_on_error: runs not yet started are left alone."""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run_one(self, k: int, spec: RunSpec, runner: Runner) -> None:
        """Train one run (skipped when finished or trained elsewhere), then rewrite the results table."""
        tag = f"[{k}/{len(self.todo)}] {spec.name}"
        st = self.states[spec.name] = run_state(spec)
        if st.status in ("done", "running"):
            why = "finished" if st.status == "done" else "being trained by another process"
            self.say(f"{tag}: skipped ({why})")
            self.outcome.skipped.append(spec.name)
            return
        write_run_config(spec)
        (spec.run_dir / FAILED_MARKER).unlink(missing_ok=True)
        how = f"resuming at step {st.step}/{st.total_steps}" if st.status == "interrupted" else "starting"
        left = remaining_seconds(self.todo[k - 1:], self.states)
        eta = f"; about {_fmt_time(left)} left in this shard" if left else ""
        self.say(f"{tag}: {how} ({_fmt_count(spec.tokens)} tokens, {spec.flops:.3g} FLOPs){eta}")
        t0 = time.monotonic()
        try:
            runner(spec)
        except RunFailed as e:
            write_json_atomic(spec.run_dir / FAILED_MARKER, {"error": str(e), "time": time.time()})
            self.states[spec.name] = run_state(spec)
            self.say(f"{tag}: FAILED: {e}")
            self.outcome.failed.append(spec.name)
            write_results(self.plan, self.states)
            self.stop = self.stop_on_error
            return
        st = self.states[spec.name] = run_state(spec)
        if st.status == "done":
            s = st.summary
            self.say(f"{tag}: done in {_fmt_time(time.monotonic() - t0)}: val loss "
                     f"{s.final_val_loss:.4f}, ppl {s.final_val_ppl:.2f}")
            self.outcome.finished.append(spec.name)
        else:
            self.say(f"{tag}: stopped before the end ({st.status} at {_progress_text(st)}); it resumes next time")
            self.outcome.unfinished.append(spec.name)
        write_results(self.plan, self.states)


def execute(plan: SweepPlan, runner: Runner, shard: tuple[int, int] = (0, 1), stop_on_error: bool = False,
            out: TextIO | None = None) -> SweepOutcome:
    """Run this shard's unfinished runs one after another in this process (smallest first), then write the
    results table.

    Finished runs are skipped, interrupted ones resume from their checkpoints (the trainer's
    ``train.resume=auto``), runs another process is training are left to it. The results table is rewritten
    after every run, so an interrupted sweep still has one.
    """
    out = out or sys.stderr
    mine = shard_runs(plan.runs, *shard)
    claim_sweep_dir(plan)
    check_existing(mine)
    states = {r.name: run_state(r) for r in plan.runs}
    print(progress_view(plan, states, mine if shard[1] > 1 else None), file=out)
    sweep = _Sweep(plan, states, sorted(mine, key=lambda r: (r.flops, r.name)), out, stop_on_error)
    try:
        for k, spec in enumerate(sweep.todo, start=1):
            if sweep.stop:
                break
            sweep.run_one(k, spec, runner)
    except KeyboardInterrupt:
        states = {r.name: run_state(r) for r in plan.runs}
        write_results(plan, states)
        print("sweep interrupted: finished runs are kept, the interrupted one resumes from its last checkpoint "
              "when you run the same command again", file=out)
        raise
    outcome = sweep.outcome
    states = {r.name: run_state(r) for r in plan.runs}
    write_results(plan, states)
    outcome.unfinished += [r.name for r in mine if states[r.name].status not in ("done", "running")
                           and r.name not in outcome.failed and r.name not in outcome.unfinished]
    print(progress_view(plan, states, mine if shard[1] > 1 else None), file=out)
    print(f"results: {plan.results_csv} ({sum(s.status == 'done' for s in states.values())} finished runs), "
          f"{plan.results_json}", file=out)
    return outcome
