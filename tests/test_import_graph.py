"""Dependencies run downward: the import graph of src/lowrank_lm has no circle and no upward edge.

The graph is read from the source with ``ast`` (every ``import`` statement, those inside functions and under
``if TYPE_CHECKING`` included), so a lazy import cannot hide a dependency. The layers come from ONE place, the
table in docs/architecture.md between its ``layers:begin`` / ``layers:end`` markers: the page a reader sees is
the rule the test applies. A module may import modules of its own unit and of units in lower layers; two units
of one layer may not import each other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lowrank_lm"
DOC = ROOT / "docs" / "architecture.md"

def module_files() -> dict[str, Path]:
    """Dotted module name under lowrank_lm (``__init__`` for the package itself) -> its file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that ``name`` (absolute, dotted) lands in: the longest existing prefix."""
    if name == "lowrank_lm":
        return "__init__"
    if not name.startswith("lowrank_lm."):
        return None
    rest = name.removeprefix("lowrank_lm.")
    while rest not in modules:
        if "." not in rest:
            return "__init__"  # a name the package itself defines, such as __version__
        rest = rest.rsplit(".", 1)[0]
    return rest


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute dotted names an import statement reaches: ``from a import b`` gives a.b (a submodule or not)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolve against the importing module's package
        base = ["lowrank_lm", *([] if module == "__init__" else module.split("."))]
        if not is_package:
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [f"{prefix}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}, for our modules only, self-imports dropped."""
    modules = module_files()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported_names(node, module, is_package):
                    target = _target(name, modules)
                    if target is not None and target != module:
                        graph[module].setdefault(target, node.lineno)
    return graph


def read_layers(text: str) -> list[tuple[int, str, list[str]]]:
    """(layer, unit, module patterns) rows of the table between the layers:begin / layers:end markers."""
    block = re.search(r"<!-- layers:begin -->(.*?)<!-- layers:end -->", text, re.S)
    assert block, f"{DOC} has no <!-- layers:begin --> ... <!-- layers:end --> table"
    rows = []
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], re.findall(r"`([^`]+)`", cells[2])))
    return rows


def unit_of(module: str, rows: list[tuple[int, str, list[str]]]) -> tuple[int, str]:
    """(layer, unit) of a module: the row naming it, or its package (``data`` covers ``data.tokenizer``)."""
    found = [(layer, unit) for layer, unit, patterns in rows
             for p in patterns if module == p or module.startswith(p + ".")]
    assert len(found) == 1, f"module {module} is in {len(found)} rows of the layers table in {DOC}"
    return found[0]


@pytest.fixture(scope="module")
def graph():
    return import_graph()


@pytest.fixture(scope="module")
def rows():
    return read_layers(DOC.read_text())


def test_the_graph_reader_sees_function_level_relative_and_type_checking_imports(tmp_path):
    # the reader on the real tree: known edges of each kind are found
    g = import_graph()
    assert "checkpoint" in g["train.checkpointer"]  # a top-level from-import
    assert "decoding" in g["api"]  # "from lowrank_lm import decoding": a submodule through the package
    assert "checkpoint" in g["api"]  # inside load(): a function-level import
    assert "export.remote.configuration_lowrank_lm" in g["export.remote.modeling_lowrank_lm"]  # relative
    assert "api" in g["__init__"]  # under "if TYPE_CHECKING"
    tree = ast.parse("from ..errors import UserError\nfrom . import registry\n")
    a, b = tree.body
    assert _imported_names(a, "layers.base", False) == ["lowrank_lm.errors.UserError"]
    assert _imported_names(b, "layers", True) == ["lowrank_lm.layers.registry"]


def test_every_module_is_in_exactly_one_row_of_the_layers_table(graph, rows):
    assert rows, "the layers table is empty"
    for module in graph:
        unit_of(module, rows)  # asserts
    units = [unit for _, unit, _ in rows]
    assert len(units) == len(set(units)), "a unit is named twice in the layers table"


def test_nothing_imports_upward_or_sideways(graph, rows):
    bad = []
    for module, targets in graph.items():
        layer, unit = unit_of(module, rows)
        for target, line in targets.items():
            t_layer, t_unit = unit_of(target, rows)
            if (t_unit == unit or t_layer < layer):
                continue
            bad.append(f"{module} ({unit}, layer {layer}) imports {target} ({t_unit}, layer {t_layer}) "
                       f"at {graph_path(module)}:{line}")
    assert not bad, "imports against docs/architecture.md's layers:\n" + "\n".join(bad)


def graph_path(module: str) -> str:
    return str(module_files()[module].relative_to(ROOT))


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_circle_finder_finds_a_circle_and_only_circles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_circle_between_modules(graph):
    circles = strongly_connected({m: set(targets) for m, targets in graph.items()})
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)
