"""Print a resolved config (CONFIG with its base chain and KEY=VALUE overrides applied and checked) as YAML, or,
without CONFIG, the config reference: every key with its type, default and meaning.

The resolved YAML is what a run writes as RUN/config.yaml: a fraction is replaced by the settings it solves to,
so the file reloads to the same model. The reference is generated from the docstrings of the config dataclasses;
docs/config.md is that output with --markdown.
"""

from __future__ import annotations

import argparse

from lowrank_lm.commands.common import add_config_arguments
from lowrank_lm.errors import UserError

EXAMPLES = ["lowrank-lm config configs/cpu/tiny.yaml model.ffn.kind=lowrank model.ffn.fraction=0.32",
            "lowrank-lm config", "lowrank-lm config --markdown > docs/config.md",
            "lowrank-lm config | grep -A2 warmup"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG and KEY=VALUE overrides (both optional), and --markdown."""
    add_config_arguments(p, required=False)
    p.add_argument("--markdown", action="store_true",
                   help="print the reference as markdown tables (what docs/config.md holds); without CONFIG only")


def run(args: argparse.Namespace) -> None:
    """Print the resolved config as YAML, or without CONFIG the reference of every key."""
    if args.config is None:
        from lowrank_lm.config_reference import reference_markdown, reference_text

        print(reference_markdown() if args.markdown else reference_text(), end="")
        return
    if args.markdown:
        raise UserError("--markdown prints the reference; it does not apply with CONFIG (drop one of them)")
    import yaml

    from lowrank_lm.config import config_to_dict
    from lowrank_lm.resolve import load_config

    print(yaml.safe_dump(config_to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
