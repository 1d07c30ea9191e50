"""Every run of a sweep a submitit job, watched and cancelled from one place: ``sweep --executor submitit``
(Slurm, or submitit's local executor where there is no Slurm) and ``sweep --executor local`` (the local
executor with the command's own settings, :mod:`lowrank_lm.launch.local`).

submitit's AutoExecutor picks Slurm where ``srun`` exists and its local executor elsewhere (jobs as
local processes: what the tests use). One job per run, each with its own resources (the ``cluster:``
section, per size), running the trainer or torchrun (lowrank_lm.launch.cluster) inside a
:class:`~lowrank_lm.launch.jobs.TrainJob` that submitit requeues on the scheduler's signal.

The command submits the runs that are neither finished nor already queued, then follows them,
printing each run as it ends and rewriting results.csv (the jobs rewrite it too when they end, so
it grows even when nobody follows: ``--detach`` on Slurm). submitit's local executor runs at most
``max_parallel`` jobs at a time (default 1), submitted as earlier ones end.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lowrank_lm.errors import UserError
from lowrank_lm.launch.cluster import ClusterSpec, executor_parameters, launch_line
from lowrank_lm.launch.execute import (
    FAILED_MARKER,
    JOBS_DIR,
    LOG_NAME,
    RunState,
    SweepOutcome,
    _fmt_time,
    check_existing,
    claim_sweep_dir,
    progress_view,
    run_state,
    write_results,
    write_run_config,
)
from lowrank_lm.launch.job_record import JobRecord
from lowrank_lm.launch.sweep import RunSpec, SweepPlan, shard_runs

# Slurm states of a job that is still the run's (queued, running, being requeued)
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}


def require_submitit() -> Any:
    """The submitit module, or one clear line on how to install it."""
    try:
        import submitit
    except ImportError:
        raise UserError("sweeps run their jobs through submitit, which is not installed: pip install "
                        "'lowrank-lm[cluster]' (or pip install submitit)") from None
    return submitit


def detect_scheduler() -> str:
    """"slurm" where srun exists, "local" (submitit's local executor) elsewhere."""
    return "slurm" if require_submitit().AutoExecutor.which() == "slurm" else "local"


# --------------------------------------------------------------------------- the scheduler's view of a job


def scheduler_state(record: JobRecord) -> str:
    """What the scheduler says of a run's job: a Slurm state (PENDING, RUNNING, ...), or running / ended."""
    if record.scheduler == "slurm":
        submitit = require_submitit()
        try:
            return str(submitit.SlurmJob(folder=record.folder, job_id=record.job_id).state)
        except Exception as e:  # sacct missing or failing: say so; the run folder still tells the state
            return f"UNKNOWN ({type(e).__name__})"
    return "running" if record.job_id.isdigit() and _cmdline_has(int(record.job_id), b"submitit") else "ended"


def job_active(record: JobRecord | None, state: str | None = None) -> bool:
    """True while the run's recorded job is queued or running (so it is not submitted again)."""
    if record is None or record.state in ("done", "failed", "stopped", "cancelled"):
        return False
    state = state if state is not None else scheduler_state(record)
    if record.scheduler == "slurm":
        return state.split()[0] in SLURM_ACTIVE or state.startswith("UNKNOWN")
    return state == "running"


def job_columns(plan: SweepPlan) -> tuple[list[str], dict[str, list[str]]] | None:
    """The --status columns from the jobs: job id, the scheduler's state, requeues, retries (None: no jobs)."""
    cells: dict[str, list[str]] = {}
    for r in plan.runs:
        rec = JobRecord.load(r.run_dir)
        if rec is None:
            continue
        sched = scheduler_state(rec) if rec.state not in ("done", "failed", "cancelled") else rec.state
        cells[r.name] = [rec.job_id, sched, str(rec.requeues), str(rec.retries)]
    return (["job", "scheduler", "requeued", "retried"], cells) if cells else None


# --------------------------------------------------------------------------- submitting and following


@dataclass
class _Watched:
    spec: RunSpec
    job: Any
    """A submitit Job, or None for a job submitted by an earlier command (followed through its record)."""
    devices: str | None = None
    """The GPUs the job holds from this command's :class:`GpuPool` (None: it holds none of them)."""
    echoed: int = 0
    """Bytes of the run's train.log already echoed (or there before the job started)."""
    since: float = field(default_factory=time.monotonic)


class GpuPool:
    """The GPUs of this machine shared out among the local executor's jobs when several run at once: each job
    takes its own (its CUDA_VISIBLE_DEVICES) and gives them back when it ends."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = list(ids)
        self.free = list(ids)

    @staticmethod
    def here() -> list[str]:
        """The GPUs this command may use: its CUDA_VISIBLE_DEVICES when set, else every GPU torch sees."""
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        if seen is not None:
            return [x.strip() for x in seen.split(",") if x.strip()]
        import torch  # only for a local sweep whose jobs ask for GPUs

        return [str(k) for k in range(torch.cuda.device_count())]

    def take(self, n: int) -> str | None:
        """``n`` free GPUs as a CUDA_VISIBLE_DEVICES value ("" for none), or None while too few are free."""
        if len(self.free) < n:
            return None
        taken, self.free = self.free[:n], self.free[n:]
        return ",".join(taken)

    def give(self, devices: str) -> None:
        """A job's GPUs back into the pool (in the machine's order)."""
        back = {d for d in devices.split(",") if d}
        self.free = [d for d in self.ids if d in back or d in self.free]


def gpu_pool(plan: SweepPlan, cluster: ClusterSpec, runs: list[RunSpec], scheduler: str,
             ids: list[str] | None = None) -> GpuPool | None:
    """The pool the local executor's jobs take their GPUs from, when several jobs that ask for GPUs run at once
    (None otherwise: one job at a time gets submitit's own choice, GPUs 0..gpus_per_node-1)."""
    wants = {r.size: cluster.for_size(r.size).gpus_per_node for r in runs}
    if scheduler != "local" or (cluster.base.max_parallel or 1) <= 1 or not any(wants.values()):
        return None
    ids = GpuPool.here() if ids is None else ids
    size, most = max(wants.items(), key=lambda kv: kv[1])
    if most > len(ids):
        raise UserError(f"{plan.path}: a job of size {size} asks for {most} GPUs (cluster.gpus_per_node) and this "
                        f"machine has {len(ids)} (CUDA_VISIBLE_DEVICES or torch); lower gpus_per_node")
    return GpuPool(ids)


def _done(w: _Watched) -> bool:
    if w.job is not None:
        return bool(w.job.done())
    return not job_active(JobRecord.load(w.spec.run_dir))


def make_executor(plan: SweepPlan, cluster: ClusterSpec, scheduler: str) -> Any:
    """submitit's AutoExecutor for this sweep: job folders under OUT_DIR/jobs/, timeouts as configured."""
    submitit = require_submitit()
    folder = plan.out_dir / JOBS_DIR / "%j"
    limit = cluster.base.max_timeouts
    return submitit.AutoExecutor(folder=folder, cluster=scheduler, slurm_max_num_timeout=limit,
                                 local_max_num_timeout=limit)


def submit_run(plan: SweepPlan, spec: RunSpec, cluster: ClusterSpec, scheduler: str,
               devices: str | None = None) -> Any:
    """Submit one run as a job (its config written first) and record the job in RUN/job.json; ``devices``: its
    GPUs on the local executor (from the :class:`GpuPool`)."""
    from lowrank_lm.launch.jobs import TrainJob

    write_run_config(spec)
    res = cluster.for_size(spec.size)
    launch = launch_line(spec.config_path, res)
    # an executor per job: submitit keeps a parameter that a later update leaves unset, and sizes differ
    executor = make_executor(plan, cluster, scheduler)
    executor.update_parameters(**executor_parameters(res, spec.name, launch, scheduler, devices))
    train = TrainJob(str(spec.run_dir), os.getcwd(), res.retries, stop_timeout_s=max(10, res.signal_delay_s - 10),
                     sweep_file=str(Path(plan.path).resolve()))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's complaint; we say it once
            job = executor.submit(train)
    except require_submitit().core.utils.FailedJobError as e:
        why = (str(e).strip().splitlines() or ["no message"])[-1]
        raise UserError(f"the scheduler refused the job of run {spec.name} ({why}); fix the sweep's cluster "
                        "section (partition, account, time, sbatch flags) or set it with --cluster") from None
    rec = JobRecord.load(spec.run_dir)
    if rec is None or rec.job_id != str(job.job_id):  # the job may already have written its own record
        JobRecord(scheduler, str(job.job_id), str(job.paths.folder)).save(spec.run_dir)
    return job


@dataclass
class Follow:
    """How ``run_jobs`` follows its jobs: poll interval, detach, and what the local executor adds (the GPUs it
    shares out, echoing the trainers' output, stopping at the first failed run)."""

    poll_s: float = 30.0
    detach: bool = False
    gpu_ids: list[str] | None = None
    """The GPUs the local jobs share out (None: those this command sees; see :func:`gpu_pool`)."""
    echo: TextIO | None = None
    """Where each running run's new log lines go while the command follows it (None: nowhere)."""
    stop_on_error: bool = False
    where: str = "submitit's local executor (no Slurm here)"


def run_jobs(plan: SweepPlan, cluster: ClusterSpec, shard: tuple[int, int] = (0, 1), detach: bool = False,
             poll_s: float = 30.0, out: TextIO | None = None, scheduler: str | None = None,
             follow: Follow | None = None) -> SweepOutcome:
    """Submit this shard's unfinished runs as jobs and (unless ``detach``) follow them to their end."""
    out = out or sys.stderr
    follow = follow or Follow(poll_s, detach)
    scheduler = scheduler or detect_scheduler()
    cluster.check_scheduler(scheduler)
    if follow.detach and scheduler == "local":
        raise UserError("--detach needs Slurm: without it (no srun here) this command runs the jobs itself; "
                        "drop --detach")
    mine = shard_runs(plan.runs, *shard)
    claim_sweep_dir(plan)
    check_existing(mine)
    states = {r.name: run_state(r) for r in plan.runs}
    print(progress_view(plan, states, mine if shard[1] > 1 else None), file=out)
    outcome = SweepOutcome([], [], [], [])
    pool = gpu_pool(plan, cluster, mine, scheduler, follow.gpu_ids)
    waiting, watched = _to_submit(mine, states, outcome, out)
    where = "Slurm" if scheduler == "slurm" else follow.where
    print(f"{len(waiting)} runs to submit to {where}; job folders in {plan.out_dir / JOBS_DIR}/", file=out)
    try:
        _follow(plan, cluster, scheduler, follow, pool, waiting, watched, outcome, out)
    except KeyboardInterrupt:
        what = ("the jobs keep running on Slurm" if scheduler == "slurm" else
                "the local jobs got Ctrl-C too and stop; their runs resume from their checkpoints")
        print(f"stopped following: {what}; watch with --status, cancel with --cancel", file=out)
        raise
    if scheduler == "local":
        _remove_template_folder(plan)
    states = {r.name: run_state(r) for r in plan.runs}
    write_results(plan, states)
    if any(_cancelled(spec) for spec in mine):
        outcome = _Cancelled(outcome.finished, outcome.skipped, outcome.failed, outcome.unfinished)
    if follow.detach:
        outcome.unfinished += [w.spec.name for w in watched]
        print(f"submitted; watch with: lowrank-lm sweep {plan.path} --status (cancel with --cancel)", file=out)
        return _Detached(outcome.finished, outcome.skipped, outcome.failed, outcome.unfinished)
    print(progress_view(plan, states, mine if shard[1] > 1 else None, jobs=job_columns(plan)), file=out)
    print(f"results: {plan.results_csv} ({sum(s.status == 'done' for s in states.values())} finished runs), "
          f"{plan.results_json}", file=out)
    return outcome


def _follow(plan: SweepPlan, cluster: ClusterSpec, scheduler: str, follow: Follow, pool: GpuPool | None,
            waiting: list[RunSpec], watched: list[_Watched], outcome: SweepOutcome, out: TextIO) -> None:
    """Submit the waiting runs as slots (and GPUs) free up, and report each job as it ends."""
    slots = (cluster.base.max_parallel or 1) if scheduler == "local" else len(waiting) + len(watched)
    while waiting or (watched and not follow.detach):
        while waiting and len(watched) < slots:
            devices = pool.take(cluster.for_size(waiting[0].size).gpus_per_node) if pool else None
            if pool is not None and devices is None:
                break  # the next run waits for a running job to give its GPUs back
            spec = waiting.pop(0)
            log = spec.run_dir / LOG_NAME
            start = log.stat().st_size if log.is_file() else 0  # echo only what this job writes
            job = submit_run(plan, spec, cluster, scheduler, devices)
            gpus = f" on GPUs {devices}" if devices else ""
            print(f"{spec.name}: submitted as job {job.job_id}{gpus}", file=out, flush=True)
            watched.append(_Watched(spec, job, devices, echoed=start))
        if follow.detach:
            break
        time.sleep(follow.poll_s)
        if follow.echo is not None:
            for w in watched:
                _echo(w, follow.echo, "    " if slots == 1 else f"    [{w.spec.name}] ")
        for w in [w for w in watched if _done(w)]:
            watched.remove(w)
            if follow.echo is not None:
                _echo(w, follow.echo, "    " if slots == 1 else f"    [{w.spec.name}] ")
            if pool is not None and w.devices is not None:
                pool.give(w.devices)
            _report(w.spec, outcome, out, w.since)
            write_results(plan, {r.name: run_state(r) for r in plan.runs})
            why = ("sweep cancelled (sweep --cancel)" if _cancelled(w.spec) else
                   "stopped at the first failed run (--stop-on-error)" if follow.stop_on_error
                   and w.spec.name in outcome.failed else None)
            if why and waiting:  # the whole sweep stops, not one job
                print(f"{why}: {len(waiting)} runs not submitted", file=out, flush=True)
                outcome.unfinished += [spec.name for spec in waiting]
                waiting.clear()


def _echo(w: _Watched, echo: TextIO, prefix: str) -> None:
    """The whole lines the run's job has added to its train.log since the last look, prefixed."""
    try:
        with (w.spec.run_dir / LOG_NAME).open("rb") as fh:
            fh.seek(w.echoed)
            text = fh.read()
    except OSError:
        return
    whole = text[:text.rfind(b"\n") + 1]
    w.echoed += len(whole)
    for line in whole.decode("utf-8", "replace").splitlines():
        echo.write(f"{prefix}{line}\n")
    echo.flush()


def _to_submit(mine: list[RunSpec], states: dict[str, RunState], outcome: SweepOutcome,
               out: TextIO) -> tuple[list[RunSpec], list[_Watched]]:
    """(runs to submit, smallest first; jobs of earlier commands still queued or running), with finished runs
    and runs trained elsewhere counted as skipped."""
    waiting: list[RunSpec] = []
    watched: list[_Watched] = []
    for spec in sorted(mine, key=lambda r: (r.flops, r.name)):
        st = states[spec.name]
        rec = JobRecord.load(spec.run_dir)
        if st.status in ("done", "running"):
            why = "finished" if st.status == "done" else "being trained by another process"
            print(f"{spec.name}: skipped ({why})", file=out)
            outcome.skipped.append(spec.name)
        elif job_active(rec):
            print(f"{spec.name}: already submitted as job {rec.job_id}", file=out)
            watched.append(_Watched(spec, None))
        else:
            (spec.run_dir / FAILED_MARKER).unlink(missing_ok=True)
            waiting.append(spec)
    return waiting, watched


def _remove_template_folder(plan: SweepPlan) -> None:
    """submitit's local job controller makes its folder template, OUT_DIR/jobs/%j, literally (and leaves it
    empty): remove it once no job of ours runs. rmdir removes only an empty folder, never something written."""
    with contextlib.suppress(OSError):
        (plan.out_dir / JOBS_DIR / "%j").rmdir()


def _cancelled(spec: RunSpec) -> bool:
    record = JobRecord.load(spec.run_dir)
    return record is not None and record.state == "cancelled"


class _Cancelled(SweepOutcome):
    """A sweep stopped with ``sweep --cancel``: what the user asked for, so exit 0 unless a run failed; the
    cancelled and unsubmitted runs resume when the sweep is submitted again."""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class _Detached(SweepOutcome):
    """Submitted and left to the scheduler: success means the jobs are queued."""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def _report(spec: RunSpec, outcome: SweepOutcome, out: TextIO, since: float) -> None:
    """One line for a run whose job has ended."""
    st = run_state(spec)
    rec = JobRecord.load(spec.run_dir)
    requeued = f", requeued {rec.requeues}x" if rec and rec.requeues else ""
    retried = f", retried {rec.retries}x" if rec and rec.retries else ""
    if st.status == "done":
        print(f"{spec.name}: done {_fmt_time(time.monotonic() - since)} after submission{requeued}{retried}: val loss "
              f"{st.summary.final_val_loss:.4f}", file=out, flush=True)
        outcome.finished.append(spec.name)
    elif st.status == "failed":
        print(f"{spec.name}: FAILED{requeued}{retried}: {st.error}", file=out, flush=True)
        outcome.failed.append(spec.name)
    elif rec is not None and rec.state == "cancelled":
        print(f"{spec.name}: cancelled (sweep --cancel); submit the sweep again to resume it", file=out, flush=True)
        outcome.unfinished.append(spec.name)
    else:
        why = rec.message if rec and rec.message else f"the job ended with the run {st.status}"
        print(f"{spec.name}: not finished ({why}); submit the sweep again to resume it", file=out, flush=True)
        outcome.unfinished.append(spec.name)


def cancel_jobs(plan: SweepPlan, shard: tuple[int, int] = (0, 1), out: TextIO | None = None) -> int:
    """Cancel the queued or running jobs of this shard's runs; the number cancelled."""
    out = out or sys.stderr
    n = 0
    for spec in shard_runs(plan.runs, *shard):
        rec = JobRecord.load(spec.run_dir)
        if not job_active(rec):
            continue
        rec.state, rec.message = "cancelled", "cancelled with sweep --cancel"
        rec.save(spec.run_dir)  # first: the job reads it when its trainer stops
        if rec.scheduler == "slurm":
            require_submitit().SlurmJob(folder=rec.folder, job_id=rec.job_id).cancel(check=False)
        elif rec.trainer_pid and _cmdline_has(rec.trainer_pid, b"lowrank_lm"):
            # submitit's local executor: the trainer checkpoints and stops (SIGTERM); its job, seeing the record,
            # ends without a requeue (SIGINT, what submitit's LocalJob.cancel sends, is ignored by jobs that
            # were started in the background)
            os.kill(rec.trainer_pid, signal.SIGTERM)
        print(f"{spec.name}: cancelled job {rec.job_id}", file=out)
        n += 1
    if n == 0:
        print("no queued or running jobs to cancel", file=out)
    return n


def _cmdline_has(pid: int, mark: bytes) -> bool:
    """True while ``pid`` is a live process whose command line contains ``mark`` (not a reused pid)."""
    try:
        return mark in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
