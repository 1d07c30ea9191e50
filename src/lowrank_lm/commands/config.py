"""Print the config reference: every key with its type, default and meaning.

Generated from the docstrings of the config dataclasses; docs/config.md is this output with --markdown.
"""

from __future__ import annotations

import argparse

EXAMPLES = ["lowrank-lm config", "lowrank-lm config --markdown > docs/config.md",
            "lowrank-lm config | grep -A2 warmup"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--markdown", action="store_true", help="print markdown tables (what docs/config.md holds)")


def run(args: argparse.Namespace) -> None:
    from lowrank_lm.config_reference import reference_markdown, reference_text

    print(reference_markdown() if args.markdown else reference_text(), end="")
