"""The code of a remote-code export: the model wrapper and the structures' own layer modules.

A ``trust_remote_code`` folder holds the wrapper (``remote/``), the modules under ``layers/`` that declare
the model's structures together with every module they import, and ``structures_lowrank_lm.py``, written
here, which imports exactly those structures. transformers copies a remote module's code by following its
static ``from .name import`` lines, so the wrapper reaches the structures through that one generated
module, and each copied file imports only torch, transformers, the standard library and its neighbours:
the folder loads where lowrank_lm is not installed.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import sys
import types
import uuid
from pathlib import Path

from lowrank_lm.layers import registry

WRAPPER_DIR = Path(__file__).parent / "remote"
WRAPPER_FILES = ("configuration_lowrank_lm.py", "modeling_lowrank_lm.py")
STRUCTURES_FILE = "structures_lowrank_lm.py"
"""The generated module through which the wrapper finds the structures (see :func:`structures_module`)."""
ALLOWED_IMPORTS = frozenset({"torch", "transformers", *sys.stdlib_module_names})
"""The packages a copied file may import by name; anything else must be a neighbour, imported relatively."""


def _imports(path: Path) -> tuple[list[str], list[str]]:
    """(neighbours imported relatively, packages imported by name) of the Python file ``path``.

    A relative import other than ``from .name import ...`` is refused: transformers follows only that form.
    """
    relative, absolute = [], []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1 or not node.module or "." in node.module:
                raise RuntimeError(f"{path}:{node.lineno}: write the import as `from .name import ...` (a neighbour "
                                   "module); transformers copies remote code by following only that form")
            relative.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module:
            absolute.append(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            absolute += [alias.name.split(".")[0] for alias in node.names]
    return relative, absolute


def standalone_files(start: list[Path]) -> list[Path]:
    """``start`` and every neighbour module they import relatively, transitively (sorted by name).

    Raises RuntimeError for a file that imports a package other than torch, transformers or the standard
    library (lowrank_lm included): it could not be copied into an export.
    """
    seen: dict[str, Path] = {}
    todo = list(start)
    while todo:
        path = todo.pop()
        if path.name in seen:
            continue
        seen[path.name] = path
        relative, absolute = _imports(path)
        foreign = sorted(set(absolute) - ALLOWED_IMPORTS)
        if foreign:
            raise RuntimeError(f"{path} imports {', '.join(foreign)}: a module a remote-code export copies may import "
                               "only torch, transformers, the standard library and its neighbours (relatively, "
                               "`from .base import ...`)")
        todo += [path.parent / f"{name}.py" for name in relative]
    return [seen[name] for name in sorted(seen)]


def structures_module(kinds: list[str]) -> str:
    """The source of ``structures_lowrank_lm.py``: a static import of each structure ``kinds`` names."""
    stems = sorted({registry.module_file(k).stem for k in kinds})
    lines = ['"""The structures of this model\'s linear layers, each declared by its own module beside this file.',
             "",
             "Written by the lowrank-lm exporter for this model; it imports only the structures the model uses.",
             '"""',
             "",
             *(f"from .{stem} import SPEC as {stem}" for stem in stems),
             "from .structure import DENSE, SIZE_SETTINGS",
             "",
             f"STRUCTURES = {{spec.name: spec for spec in [{', '.join(stems)}]}}",
             '"""kind name -> Structure: its ``build`` makes the layer."""',
             ""]
    return "\n".join(lines)


def write_remote_code(folder: Path, kinds: list[str]) -> list[str]:
    """Write the wrapper and the modules of the structures ``kinds`` into ``folder``; return the file names."""
    layers = standalone_files([registry.module_file(k) for k in kinds])
    for path in [*(WRAPPER_DIR / name for name in WRAPPER_FILES), *layers]:
        shutil.copy(path, folder / path.name)
    (folder / STRUCTURES_FILE).write_text(structures_module(kinds))
    # what the wrapper needs, followed from the folder as written: a missing or foreign import fails here
    return [p.name for p in standalone_files([folder / name for name in WRAPPER_FILES])]


def load_remote_class(folder: Path, name: str) -> type:
    """Class ``name`` of the wrapper written in ``folder``, imported from those files alone (as transformers does).

    The folder is imported as a package of its own, under a private name that is forgotten afterwards, and
    without writing bytecode (a ``__pycache__`` folder) into it.
    """
    package = f"_lowrank_lm_export_{uuid.uuid4().hex}"
    module = types.ModuleType(package)
    module.__path__ = [str(folder)]
    sys.modules[package] = module
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        return getattr(importlib.import_module(f"{package}.{WRAPPER_FILES[1].removesuffix('.py')}"), name)
    finally:
        sys.dont_write_bytecode = writes_bytecode
        for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[key]
