"""The demo: train a config and its LowRank-32% twin on the same tokens, then compare them in a table."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowrank_lm.commands.common import add_config_arguments, config_from_args

EXAMPLES = ["lowrank-lm demo configs/cpu/tiny.yaml",
            "lowrank-lm demo configs/cpu/tiny.yaml --out runs/demo2"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG with overrides, --out and --overwrite."""
    add_config_arguments(p)
    p.add_argument("--out", default="runs/demo", help="folder for both runs, the table and the plot")
    p.add_argument("--overwrite", action="store_true",
                   help="train both runs again (replaces only the files a run writes; needed when --out "
                        "holds runs of other settings)")


def run(args: argparse.Namespace) -> None:
    """Train the config and its LowRank-32% twin and write their table and plot under --out."""
    from lowrank_lm.demo import run_demo
    from lowrank_lm.runtime import tune_malloc

    tune_malloc()
    cfg = config_from_args(args)
    run_demo(cfg, Path(args.out), overwrite=args.overwrite)
