"""One sweep run as a scheduler job: started, watched, requeued on preemption, retried on failure.

submitit pickles a :class:`TrainJob` and runs it in the job (one task per node). The job runs the
line its job script exports (``LOWRANK_LM_LAUNCH``: the trainer, or torchrun around it) with the
run's output in ``RUN/train.log``, and decides from the trainer's exit status and the run folder:

* finished (``summary.json``): done;
* a user error (exit status 2, or the trainer's one-line ``error:`` in the log, which is what is left
  of it behind torchrun): failed, not requeued: the same mistake would fail again;
* the scheduler's signal (before the time limit, or on preemption where the cluster signals it): the
  trainer gets SIGTERM, finishes its step, writes a checkpoint and exits (status 75); the job is
  requeued through submitit (a :class:`submitit.helpers.Checkpointable`), and the requeued job
  resumes from the checkpoint (the sweep's runs have ``train.resume=auto``);
* stopped (75) without the scheduler's signal to the job (``scancel``; preemption on a cluster that
  only sends SIGTERM): the run keeps its checkpoint and the job ends; a scheduler that requeues
  preempted jobs itself brings it back, and the next ``sweep`` resubmits it otherwise;
* any other failure: requeued, at most ``retries`` times, then failed with the log's last line.

What happened is kept in ``RUN/job.json`` (job id, state, requeue and retry counts), which
``sweep --status`` shows beside what the run folder says.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import submitit

from lowrank_lm.atomic import open_append, write_json_atomic
from lowrank_lm.errors import EXIT_STOPPED
from lowrank_lm.launch.cluster import LAUNCH_ENV
from lowrank_lm.launch.execute import FAILED_MARKER, LOG_NAME, last_line
from lowrank_lm.launch.job_record import JobRecord
from lowrank_lm.train.rundir import SUMMARY
from lowrank_lm.train.summary import RunSummary

EXIT_USER_ERROR = 2
USER_ERROR_MARK = "lowrank-lm train: error:"
"""How the CLI's one line for a user error starts (lowrank_lm.cli.main); torchrun exits 1 around it."""


def user_error_in(log: Path, start: int) -> str | None:
    """The trainer's one-line user error printed after byte ``start`` of ``log``, or None."""
    try:
        with log.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = [x.strip() for x in text.splitlines() if x.strip().startswith(USER_ERROR_MARK)]
    return found[-1] if found else None


class JobFailed(Exception):
    """The run failed in its job (the message is the reason); submitit records it as the job's error."""


def _preempt_signal() -> signal.Signals:
    """The signal submitit asks the scheduler to send (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


class TrainJob(submitit.helpers.Checkpointable):
    """Train one sweep run inside a scheduler job; requeued by submitit when the scheduler signals it."""

    def __init__(self, run_dir: str, workdir: str, retries: int, stop_timeout_s: float,
                 sweep_file: str | None = None) -> None:
        self.run_dir = run_dir
        self.workdir = workdir
        self.retries = retries
        self.stop_timeout_s = stop_timeout_s
        self.sweep_file = sweep_file
        self.requeues = 0
        self.retries_used = 0
        self._proc: subprocess.Popen | None = None
        self._exited: threading.Event | None = None
        self._retrying = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_proc=None, _exited=None, _retrying=False)  # a process does not travel to the requeued job
        return state

    # ------------------------------------------------------------------ the job
    def __call__(self) -> dict[str, Any]:
        os.chdir(self.workdir)  # the run folders are relative to where the sweep was submitted
        run = Path(self.run_dir)
        env = submitit.JobEnvironment()
        if env.global_rank != 0:
            return self._follow(run)
        if (run / SUMMARY).is_file():  # finished just before a requeue
            return self._finish(run, env)
        launch = os.environ.get(LAUNCH_ENV)
        if not launch:
            raise JobFailed(f"the job script exports no {LAUNCH_ENV}; submit the run with lowrank-lm sweep")
        if (JobRecord.load(run) or JobRecord("", "", "")).state == "cancelled":  # cancelled before it started
            return {"finished": False}
        self._record(run, env, state="running", message=None)
        rc, start = self._attempt(run, launch)
        if (run / SUMMARY).is_file():
            return self._finish(run, env)
        if (JobRecord.load(run) or JobRecord("", "", "")).state == "cancelled":
            # sweep --cancel stopped the trainer, whatever its exit status (a SIGTERM before the trainer set up
            # its handler is not 75): not a failure to retry, nothing to requeue
            return {"finished": False}
        log = run / LOG_NAME
        error = user_error_in(log, start)
        if rc == EXIT_USER_ERROR or error:
            self._fail(run, env, error or last_line(log, start) or f"exit status {rc}")
        if rc == EXIT_STOPPED:
            self._record(run, env, state="stopped", message="stopped before the end (SIGTERM without the "
                         "scheduler's requeue signal); the checkpoint is kept: submit the sweep again to resume")
            return {"finished": False}
        last = last_line(log, start)
        why = f"exit status {rc}" + (f": {last}" if last else "")
        if self.retries_used >= self.retries:
            tries = f"failed {self.retries_used + 1} times; last: " if self.retries else ""
            self._fail(run, env, f"{tries}{why}; see {log}")
        self.retries_used += 1
        self._record(run, env, state="retrying", message=why)
        self._requeue_now()
        raise JobFailed("the job was not requeued")  # not reached: the requeue ends this process

    def _attempt(self, run: Path, launch: str) -> tuple[int, int]:
        """Run the launch line once with its output appended to RUN/train.log; (exit status, log offset)."""
        log = run / LOG_NAME
        with open_append(log, "ab") as fh:
            start = fh.tell()
            # the GPUs the job was given, as the local runner's log showed them (none: no prefix)
            gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
            fh.write(f"$ {f'CUDA_VISIBLE_DEVICES={gpus} ' if gpus else ''}{launch}\n".encode())
            fh.flush()
            # The scheduler's signal goes to every process of the job; only this one acts on it, the trainer
            # ignores it (an ignored signal stays ignored across exec) and gets SIGTERM from checkpoint().
            sig = _preempt_signal().name.removeprefix("SIG")
            proc = self._proc = subprocess.Popen(["bash", "-c", f"trap '' {sig}; exec {launch}"], stdout=fh,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            # Only this thread waits for the trainer: checkpoint() runs in this process's main thread, in the
            # middle of the wait below, and Popen.wait there would deadlock on Popen's own lock.
            exited = self._exited = threading.Event()

            def reap() -> None:
                proc.wait()
                exited.set()

            threading.Thread(target=reap, daemon=True).start()
            record = JobRecord.load(run) if submitit.JobEnvironment().global_rank == 0 else None
            if record is not None:  # task 0's trainer (or torchrun): what --cancel stops on a local executor
                record.trainer_pid = proc.pid
                record.save(run)
            try:
                exited.wait()
            except KeyboardInterrupt:  # the job is cancelled (submitit's local executor): stop cleanly
                self._stop_trainer()
                raise
        return proc.returncode, start

    def _follow(self, run: Path) -> dict[str, Any]:
        """Another node of a multi-node run: run its torchrun agent until the run ends or the job is requeued."""
        self._attempt(run, os.environ.get(LAUNCH_ENV, ""))
        while not (run / SUMMARY).is_file() and not (run / FAILED_MARKER).is_file():
            time.sleep(10)  # task 0 decides; a requeue or the job's end stops this process
        return {"finished": (run / SUMMARY).is_file()}

    # ------------------------------------------------------------------ requeue (submitit calls this)
    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """The scheduler's signal (or a retry): stop the trainer with a checkpoint and requeue this job."""
        run = Path(self.run_dir)
        rc = self._stop_trainer()
        env = submitit.JobEnvironment()
        if (run / SUMMARY).is_file():
            return None  # finished meanwhile: nothing to requeue (submitit ends the job)
        if rc == EXIT_USER_ERROR:  # e.g. no room for the checkpoint: requeued, it would fail the same way
            why = last_line(run / LOG_NAME) or "exit status 2"
            write_json_atomic(run / FAILED_MARKER, {"error": why, "time": time.time()})
            self._record(run, env, state="failed", message=why)
            return None
        if not self._retrying:
            self.requeues += 1
        self._record(run, env, state="requeued")
        return super().checkpoint(*args, **kwargs)

    def _stop_trainer(self) -> int | None:
        """SIGTERM to the trainer (it checkpoints and exits), then wait for it; its exit status."""
        proc, exited = self._proc, self._exited
        if proc is None or exited is None:
            return None
        if not exited.is_set():
            proc.send_signal(signal.SIGTERM)
            if not exited.wait(timeout=self.stop_timeout_s):  # the scheduler's kill is near: the older checkpoint
                proc.kill()
                exited.wait()
        return proc.returncode

    def _requeue_now(self) -> None:
        """Requeue through submitit's own path: the signal it handles by calling checkpoint() and requeuing."""
        self._retrying = True
        self._proc = self._exited = None
        os.kill(os.getpid(), _preempt_signal())
        time.sleep(60)  # the handler runs at once and ends this process

    # ------------------------------------------------------------------ bookkeeping
    def _record(self, run: Path, env: Any, **changes: Any) -> None:
        record = JobRecord.load(run) or JobRecord(scheduler=env.cluster, job_id=str(env.job_id), folder="")
        record.job_id, record.host, record.pid = str(env.job_id), socket.gethostname(), os.getpid()
        record.requeues, record.retries = self.requeues, self.retries_used
        for k, v in changes.items():
            setattr(record, k, v)
        record.save(run)

    def _finish(self, run: Path, env: Any) -> dict[str, Any]:
        summary = RunSummary.read(run / SUMMARY).to_dict()  # submitit pickles what a job returns: plain data
        self._record(run, env, state="done", message=None)
        self._refresh_results()
        return summary

    def _fail(self, run: Path, env: Any, why: str) -> None:
        write_json_atomic(run / FAILED_MARKER, {"error": why, "time": time.time()})
        self._record(run, env, state="failed", message=why)
        self._refresh_results()
        raise JobFailed(why)

    def _refresh_results(self) -> None:
        """Rewrite the sweep's results table, so it grows as jobs finish even when nobody watches."""
        if not self.sweep_file:
            return
        from lowrank_lm.errors import UserError
        from lowrank_lm.launch.execute import refresh_results

        try:
            refresh_results(self.sweep_file)
        except (UserError, OSError) as e:  # the table is a convenience; sweep --status rewrites it
            print(f"results table not refreshed: {e}", file=sys.stderr, flush=True)
