"""Every public module-level function and class in src/ says what it is for (issue 24: docstrings on public
functions). Methods are left to review: many are properties, ``to_json`` or torch overrides."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lowrank_lm"


def undocumented(source: str) -> list[str]:
    """Names of the public top-level functions and classes of ``source`` without a docstring."""
    tree = ast.parse(source)
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [n.name for n in tree.body
            if isinstance(n, kinds) and not n.name.startswith("_") and ast.get_docstring(n) is None]


def test_the_checker_finds_a_missing_docstring_and_only_that():
    source = 'def a():\n    """Doc."""\n\ndef b():\n    pass\n\ndef _c():\n    pass\n\nclass D:\n    x = 1\n'
    assert undocumented(source) == ["b", "D"]


def test_every_public_function_and_class_has_a_docstring():
    missing = [f"{path.relative_to(SRC)}: {name}" for path in sorted(SRC.rglob("*.py"))
               for name in undocumented(path.read_text())]
    assert not missing, "public functions or classes without a docstring:\n" + "\n".join(missing)
