"""``RUN/job.json``: the scheduler job a sweep run was submitted as, and what became of it.

Written by ``sweep --executor submitit`` when it submits the run and by the job as it runs
(lowrank_lm.launch.jobs); read by ``sweep --status`` and ``--cancel``. Imports no submitit, so the
status of a sweep can be read anywhere.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lowrank_lm.atomic import write_json_atomic

JOB_RECORD = "job.json"


@dataclass
class JobRecord:
    """``RUN/job.json``: the job a run was submitted as, and what became of it."""

    scheduler: str
    """"slurm" or "local" (submitit's local executor)."""
    job_id: str
    folder: str
    """submitit's folder of the job (its script, pickles and logs)."""
    state: str = "submitted"
    """submitted, running, requeued, done, failed or stopped."""
    requeues: int = 0
    """Times the scheduler's signal (preemption, time limit) requeued the job."""
    retries: int = 0
    """Times a failure requeued the job."""
    message: str | None = None
    host: str | None = None
    pid: int | None = None
    """The job process (submitit's task 0)."""
    trainer_pid: int | None = None
    time: float = field(default_factory=time.time)

    def save(self, run_dir: Path) -> None:
        self.time = time.time()
        write_json_atomic(run_dir / JOB_RECORD, asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> JobRecord | None:
        """The record in ``run_dir``, or None when the run was never submitted (or the file is unreadable)."""
        try:
            data = json.loads((run_dir / JOB_RECORD).read_text())
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return None
