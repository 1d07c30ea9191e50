"""The ``lowrank-lm`` command: parses arguments and hands over to one module per verb.

A :class:`~lowrank_lm.errors.UserError` from any verb ends in one line on stderr and exit code 2. A verb may
return another exit status (``train``: 75 when it stopped before its budget, resumable).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from typing import NoReturn

from lowrank_lm.errors import PeerFailed, UserError

# verb -> module under lowrank_lm.commands with add_arguments(parser) and run(args).
VERBS: dict[str, str] = {
    "info": "info",
    "bench": "bench",
    "prepare": "prepare",
    "train": "train",
    "eval": "eval",
    "demo": "demo",
    "export": "export",
    "generate": "generate",
    "lm-eval": "lm_eval",
    "fit": "fit",
    "sweep": "sweep",
    "compare": "compare",
    "config": "config",
    "plan": "plan",
    "structurize": "structurize",
    "convert-checkpoint": "convert_checkpoint",
    "coord-check": "coord_check",
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples; adds each option's default to its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
        if shown and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:  # sub-commands (bench ffn...) get the same formatting
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse would print usage first)
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _examples(module) -> str | None:
    lines = getattr(module, "EXAMPLES", [])
    return "examples:\n" + "\n".join(f"  {line}" for line in lines).replace("%", "%%") if lines else None


def _unknown_verb(argv: list[str]) -> str | None:
    """The one-line error for a mistyped verb, with the nearest verb when there is one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or first in VERBS or argv.index(first) != 0:
        return None
    near = difflib.get_close_matches(first, list(VERBS), n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else f"; choose one of {', '.join(VERBS)}"
    return f"lowrank-lm: error: unknown verb {first!r}{hint} (see lowrank-lm --help)\n"


def summary_line(doc: str) -> str:
    """A verb's line in ``lowrank-lm --help``: the first paragraph of its module docstring, on one line (a first
    sentence may wrap over several lines of the docstring)."""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())


def build_parser() -> argparse.ArgumentParser:
    """The ``lowrank-lm`` parser: every verb of :mod:`lowrank_lm.commands` with its options."""
    parser = _Parser(prog="lowrank-lm", description="Train and measure Transformer language models whose "
                     "feed-forward layers are low-rank or structured. `lowrank-lm VERB --help` for each verb.")
    from lowrank_lm import __version__

    parser.add_argument("--version", action="version", version=f"lowrank-lm {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    for verb, module_name in VERBS.items():
        module = importlib.import_module(f"lowrank_lm.commands.{module_name}")
        doc = (module.__doc__ or "").strip()
        # argparse %-formats help strings (escape them), not descriptions
        p = sub.add_parser(verb, help=summary_line(doc).replace("%", "%%") or None,
                           description=doc, epilog=_examples(module))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    """The ``lowrank-lm`` entry point: parse ``argv`` and run the verb; a UserError ends in one line, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    unknown = _unknown_verb(argv)
    if unknown:
        sys.stderr.write(unknown)
        raise SystemExit(2)
    args = build_parser().parse_args(argv)
    try:
        code = args._run(args)
    except UserError as e:
        if e.echo:
            sys.stderr.write(f"lowrank-lm {args.verb}: error: {e}\n")
        raise SystemExit(2) from None
    except PeerFailed:
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    raise SystemExit(code or 0)


if __name__ == "__main__":
    main()
