"""House rules the code keeps (issue 24): every public module-level function and class says what it is for
(methods are left to review: many are properties, ``to_json`` or torch overrides), and no function in src/ is
longer than a screen (80 lines)."""

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


MAX_LINES = 80


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in ``source`` longer than ``limit`` lines, nested ones too."""
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def test_the_length_check_counts_every_line_of_a_function():
    source = "def f():\n" + "    x = 1\n" * 4 + "\nclass C:\n    def g(self):\n        return 1\n"
    assert long_functions(source, limit=4) == [("f", 5)]
    assert long_functions(source, limit=5) == []


def test_no_function_in_src_is_longer_than_a_screen():
    long = [f"{path.relative_to(SRC)}: {name} ({lines} lines)" for path in sorted(SRC.rglob("*.py"))
            for name, lines in long_functions(path.read_text())]
    assert not long, f"functions over {MAX_LINES} lines (split them):\n" + "\n".join(long)
