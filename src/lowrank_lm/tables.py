"""Tables for reports and terminals: GitHub markdown, and plain columns aligned with spaces.

Every table the package prints or writes goes through here: the demo's, compare's, the config reference,
the scaling reports and the benches. Cells arrive as finished strings; formatting numbers and escaping a
``|`` inside a cell stay with the caller, since each report has its own rule (``\\|`` in the config
reference, ``/`` in the scaling reports). Ours rather than a library such as tabulate: our markdown
tables are unpadded (``| a | b |`` over ``|---|---|``), which tabulate's formats do not write, and the
checked-in tables (README, docs/config.md, docs/results) must stay byte-identical; the whole job is a
few lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str | None]]) -> str:
    """A GitHub markdown table: the header, a ``|---|`` rule, one line per row; no newline at the end.

    A ``None`` cell is written as one space (``| |``), an empty string as two (``|  |``): both render as an
    empty cell, and each keeps the bytes of the tables already written with it.
    """
    lines = [_markdown_row(header), "|" + "---|" * len(header)]
    lines += [_markdown_row(row) for row in rows]
    return "\n".join(lines)


def _markdown_row(cells: Sequence[str | None]) -> str:
    return "|" + "|".join(" " if c is None else f" {c} " for c in cells) + "|"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Left-aligned columns two spaces apart, each as wide as its widest cell, every line after ``indent``; no
    trailing blanks."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = [header, *rows]
    return "\n".join(indent + "  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)
