"""Several multi-process jobs in one torchrun launch (starting processes costs more than the tiny runs).

Used by tests/test_distributed.py: ``torchrun --standalone --nproc_per_node 2 tests/distributed_jobs.py JOBS``
where JOBS is a JSON list of ``{"train": CONFIG_YAML, "max_steps": N or null}`` and
``{"eval": [ARGS of lowrank-lm eval]}``, run in order in one process group. Eval jobs come last: the eval
command leaves the process group when it is done.

Each rank says on stderr when it has finished a job and when it has left the process group ("[jobs] rank 1:
job 3/15 done"), and faulthandler prints every thread's Python stack if a rank dies by a signal: a CI run once
lost rank 1 to a SIGABRT ("terminate called without an active exception", from C++) that 30 runs here did not
repeat, and its log could not say which job or line it was in.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
from pathlib import Path

from lowrank_lm.commands import eval as eval_command
from lowrank_lm.resolve import load_config
from lowrank_lm.train import distributed
from lowrank_lm.train.loop import Trainer


def say(message: str) -> None:
    print(f"[jobs] rank {os.environ.get('RANK', '?')}: {message}", file=sys.stderr, flush=True)


def main(jobs_file: str) -> None:
    faulthandler.enable(all_threads=True)
    jobs = json.loads(Path(jobs_file).read_text())
    for i, job in enumerate(jobs, 1):
        if "train" in job:
            Trainer(load_config(job["train"]), max_steps=job.get("max_steps")).run()
        else:
            parser = argparse.ArgumentParser()
            eval_command.add_arguments(parser)
            eval_command.run(parser.parse_args(job["eval"]))
        say(f"job {i}/{len(jobs)} done")
    distributed.teardown()
    say("left the process group")


if __name__ == "__main__":
    main(sys.argv[1])
