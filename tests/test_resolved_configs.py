"""Every preset and sweep plan resolves to the text committed before the configuration machinery changed.

The two sides take different paths: the dump in tests/data/ was written by the code of commit a18e374 (the
hand-written loader); the other side is whatever loads configs now.
"""

from __future__ import annotations

import difflib

from tests.resolved_configs import ROOT, dump

GOLDEN = ROOT / "tests" / "data" / "resolved_configs.txt"


def test_every_config_file_resolves_byte_equal_to_the_committed_dump():
    now, before = dump(), GOLDEN.read_text()
    if now != before:
        diff = difflib.unified_diff(before.splitlines(), now.splitlines(), "committed", "now", lineterm="", n=2)
        raise AssertionError("resolved configs changed:\n" + "\n".join(list(diff)[:60]))


def test_the_dump_covers_every_config_file():
    sections = [line.removeprefix("=== ") for line in GOLDEN.read_text().splitlines() if line.startswith("=== ")]
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
    assert sections == files
    assert GOLDEN.read_text().count("\n--- run ") >= 100  # the sweep plans are expanded, run by run
