"""Arguments shared by several verbs."""

from __future__ import annotations

import argparse

from lowrank_lm.config import Config
from lowrank_lm.resolve import load_config


def add_config_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """CONFIG [key=value ...]: a YAML file followed by dotted overrides."""
    p.add_argument("config", nargs=None if required else "?", metavar="CONFIG",
                   help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. model.ffn.kind=lowrank model.ffn.rank=512")


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file of ``args.config`` with ``args.overrides`` applied and checked."""
    return load_config(args.config, args.overrides)
