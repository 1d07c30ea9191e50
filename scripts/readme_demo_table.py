"""Put the demo's table into README.md: the table `make demo` printed, rendered from its results.json.

    make demo && cp runs/demo/results.json docs/results/demo.json && python scripts/readme_demo_table.py

tests/test_demo.py checks that the README's table is this rendering of docs/results/demo.json.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from lowrank_lm.demo import demo_table

ROOT = Path(__file__).resolve().parents[1]
TABLE = re.compile(r"^\| model \| params \|.*?(?=\n\n)", flags=re.S | re.M)


def main() -> None:
    record = json.loads((ROOT / "docs/results/demo.json").read_text())
    readme = ROOT / "README.md"
    text = readme.read_text()
    if not TABLE.search(text):
        sys.exit("README.md has no demo table (a line starting '| model | params |')")
    readme.write_text(TABLE.sub(lambda _: demo_table(record), text, count=1))
    print(demo_table(record))


if __name__ == "__main__":
    main()
