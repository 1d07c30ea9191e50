"""Train a model on a token budget (resumes automatically; works under torchrun for DDP / FSDP).

CONFIG may be a run folder: `lowrank-lm train RUN_DIR` continues the run in it with its own config.yaml.
Exit status 0 when the run finished, 75 when it stopped before its budget (Ctrl-C, SIGTERM, SIGUSR1,
--max-steps) with a checkpoint to continue from, 2 for a user error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

from lowrank_lm.commands.common import add_config_arguments, config_from_args
from lowrank_lm.config import Config
from lowrank_lm.errors import EXIT_STOPPED, UserError
from lowrank_lm.resolve import load_config

if TYPE_CHECKING:
    from lowrank_lm.train.summary import StoppedRun


EXAMPLES = ["lowrank-lm train configs/cpu/tiny.yaml",
            "lowrank-lm train configs/cpu/tiny.yaml model.ffn.kind=lowrank model.ffn.rank=32 train.out_dir=runs/lr32",
            "torchrun --standalone --nproc_per_node=8 -m lowrank_lm train configs/paper/transformer-s.yaml"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG (a file, or a run folder to continue) with overrides, --overwrite and --max-steps."""
    add_config_arguments(p)
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an out_dir that holds a finished or checkpointed run")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps in total, with a checkpoint to resume from (exit status 75)")


def run_dir_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config a run folder was trained with, pointed at that folder and resuming from its checkpoints."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise UserError(f"{run_dir} is a folder without config.yaml; give a YAML config, or the folder of a run "
                        "that lowrank-lm train has started")
    if any(o.split("=", 1)[0].strip() == "train.out_dir" for o in overrides):
        raise UserError(f"train.out_dir cannot be set when resuming the run folder {run_dir}: the run stays "
                        "where it is; give its config.yaml instead to train elsewhere")
    return load_config(saved, ["train.resume=auto", f"train.out_dir={run_dir}", *overrides])


def continue_command(run_dir: str) -> str:
    """The command that continues a run in ``run_dir`` the way this process was launched."""
    tail = f"train {shlex.quote(run_dir)}"
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # not under torchrun
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # srun, mpirun: their command line is not ours to know
            return f"this job's launcher (srun, mpirun) running lowrank-lm {tail}"
        return f"lowrank-lm {tail}"
    nproc = os.environ.get("LOCAL_WORLD_SIZE", "1")
    nodes = int(os.environ.get("WORLD_SIZE", nproc)) // max(1, int(nproc))
    launcher = f"torchrun --nproc_per_node={nproc}" + (f" --nnodes={nodes} (and this job's rendezvous options)"
                                                       if nodes > 1 else "")
    return f"{launcher} -m lowrank_lm {tail}"


def stopped_line(result: StoppedRun) -> str:
    """The last line of a run that stopped before its budget: where it stands and how to continue."""
    why = "--max-steps" if result.stopped_by == "max_steps" else result.stopped_by
    return (f"stopped at step {result.steps} of {result.total_steps} ({why}), checkpoint written; "
            f"continue with: {continue_command(result.run_dir)}")


def run(args: argparse.Namespace) -> int:
    """Train to the token budget; returns 0 when the run finished, 75 when it stopped early with a checkpoint."""
    from lowrank_lm.runtime import tune_malloc
    from lowrank_lm.train import run_training
    from lowrank_lm.train.agreement import launch_rank, said_once

    tune_malloc()  # large CPU tensors stay on the heap: faster small-model steps (docs/results/efficiency-cpu.md)
    try:
        path = Path(args.config)
        cfg = run_dir_config(path, args.overrides) if path.is_dir() else config_from_args(args)
    except UserError as e:  # every rank reads the same files: rank 0 says it
        raise said_once(e) from None
    result = run_training(cfg, overwrite=args.overwrite, max_steps=args.max_steps)
    if result.finished:
        return 0
    if launch_rank() == 0:
        print(stopped_line(cast("StoppedRun", result)), file=sys.stderr, flush=True)  # not finished: stopped
    return EXIT_STOPPED
