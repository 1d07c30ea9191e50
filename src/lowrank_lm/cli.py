"""The ``lowrank-lm`` command: parses arguments and hands over to one module per verb.

A :class:`~lowrank_lm.errors.UserError` from any verb ends in one line on stderr and exit code 2. A verb may
return another exit status (``train``: 75 when it stopped before its budget, resumable).
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
    "plan": "plan",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print usage first)
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lowrank-lm", description="Train and measure Transformer language models whose "
                     "feed-forward layers are low-rank or structured. `lowrank-lm VERB --help` for each verb.")
    from lowrank_lm import __version__

    parser.add_argument("--version", action="version", version=f"lowrank-lm {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    for verb, module_name in VERBS.items():
        module = importlib.import_module(f"lowrank_lm.commands.{module_name}")
        doc = (module.__doc__ or "").strip().replace("%", "%%")  # argparse formats help with %
        p = sub.add_parser(verb, help=doc.splitlines()[0] if doc else None, description=doc)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
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
