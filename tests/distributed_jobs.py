"""Several multi-process jobs in one torchrun launch (starting processes costs more than the tiny runs).

Used by tests/test_distributed.py: ``torchrun --standalone --nproc_per_node 2 tests/distributed_jobs.py JOBS``
where JOBS is a JSON list of ``{"train": CONFIG_YAML, "max_steps": N or null}`` and
``{"eval": [ARGS of lowrank-lm eval]}``, run in order in one process group. Eval jobs come last: the eval
command leaves the process group when it is done.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lowrank_lm.commands import eval as eval_command
from lowrank_lm.resolve import load_config
from lowrank_lm.train import distributed
from lowrank_lm.train.loop import Trainer


def main(jobs_file: str) -> None:
    for job in json.loads(Path(jobs_file).read_text()):
        if "train" in job:
            Trainer(load_config(job["train"]), max_steps=job.get("max_steps")).run()
        else:
            parser = argparse.ArgumentParser()
            eval_command.add_arguments(parser)
            eval_command.run(parser.parse_args(job["eval"]))
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
