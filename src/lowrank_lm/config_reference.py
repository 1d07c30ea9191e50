"""The config reference, generated from the config dataclasses: every key, its type, default and docstring.

The attribute docstrings (the string under each field in ``config.py``) are read from the source
with :mod:`ast`, since Python keeps no attribute docstrings at run time. ``lowrank-lm config`` prints
the reference; ``lowrank-lm config --markdown > docs/config.md`` regenerates the doc, which a test
keeps equal to it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Optional

from lowrank_lm import config as config_module
from lowrank_lm.config import AttnConfig, Config, FFNConfig, _type_name
from lowrank_lm.layers import registry
from lowrank_lm.tables import markdown_table


@dataclass
class Key:
    """One config key: its dotted name, type, default and description."""

    name: str
    type: str
    default: str
    doc: str


@dataclass
class Section:
    """A config section (a dataclass): its dotted prefix, description and keys."""

    prefix: str
    doc: str
    keys: list[Key]


def attribute_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass: ``{field: docstring}`` for fields that have one."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        value = list(value)
    return str(value)


def _hint(cls: type, name: str, hint: Any) -> Any:
    """A field's type as the reference names it: a structure's kind and init are plain names in the config, and
    the registry's choices here."""
    if cls in (FFNConfig, AttnConfig) and name == "kind":
        return registry.StructureKind
    if cls in (FFNConfig, AttnConfig) and name == "init":
        return Optional[registry.StructureInit]
    return hint


def sections(cls: type = Config, prefix: str = "") -> list[Section]:
    """The sections of ``cls`` in declaration order, depth first (model, model.ffn, data, train, ...)."""
    hints = typing.get_type_hints(cls, vars(config_module))
    docs = attribute_docs(cls)
    own = Section(prefix, " ".join(inspect.cleandoc(cls.__doc__ or "").split()), [])
    nested: list[Section] = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            nested += sections(hints[f.name], name)
        else:
            own.keys.append(Key(name, _type_name(_hint(cls, f.name, hints[f.name])), _default(f),
                                docs.get(f.name, "")))
    return ([own] if own.keys else []) + nested


def undocumented() -> list[str]:
    """Keys without a docstring (a test keeps this empty, so the reference describes every key)."""
    return [k.name for s in sections() for k in s.keys if not k.doc]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The whole reference as markdown (docs/config.md)."""
    lines = ["# Config reference", "",
             "Every key of a config file, generated from the docstrings in `src/lowrank_lm/config.py` by "
             "`lowrank-lm config --markdown > docs/config.md` (a test keeps this file equal to that output).",
             "A key is set in a YAML file (`train: {lr: 3e-4}`) or on the command line as a dotted override "
             "(`train.lr=3e-4`); `empty` is YAML's null (`key=` on the command line).", ""]
    for s in sections():
        rows = [[f"`{k.name}`", _cell(k.type), f"`{k.default}`", _cell(k.doc)] for k in s.keys]
        lines += [f"## {s.prefix}", "", s.doc, "", markdown_table(["key", "type", "default", "what it does"], rows)]
        lines.append("")
    return "\n".join(lines)


def reference_text(width: int = 100) -> str:
    """The reference for a terminal: one key per paragraph, the description wrapped."""
    out: list[str] = []
    for s in sections():
        out += [f"{s.prefix}: {s.doc}", ""]
        for k in s.keys:
            out.append(f"  {k.name} = {k.default}   ({k.type})")
            out += textwrap.wrap(k.doc, width, initial_indent="      ", subsequent_indent="      ")
        out.append("")
    return "\n".join(out)
