"""What every bench writes: the machine it ran on, JSON, a markdown table and PNG plots.

A result file is ``{"meta": {...}, "rows": [...]}``; the meta block names the device, dtype, torch
version, thread count, load average and command line, so a number never travels without its
machine. Plots need matplotlib (the ``analysis`` extra); without it they are skipped with a note.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lowrank_lm import tables
from lowrank_lm.contention import busy_cores, contention_warning  # noqa: F401  (re-exported for the benches)
from lowrank_lm.errors import UserError
from lowrank_lm.ownership import Ownership


class Interrupted(Exception):
    """A bench stopped by Ctrl-C or SIGINT (a time limit) after measuring ``rows``: they are still written."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(f"interrupted after {len(rows)} rows")
        self.rows = rows


def device_name(device: torch.device) -> str:
    """A human name for the device: the GPU model, or the CPU model and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical cores)"


def machine_meta(device: torch.device, dtype: str | None = None) -> dict[str, Any]:
    """Where and how a measurement ran."""
    meta: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "dtype": dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "command": "lowrank-lm " + " ".join(sys.argv[1:]) if _run_from_the_cli() else None,
    }
    if hasattr(os, "getloadavg"):
        meta["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        meta["cuda"] = torch.version.cuda
    return meta


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub markdown table of ``rows`` with (key, header) ``columns``."""
    body = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    return tables.markdown_table([h for _, h in columns], body) + "\n"


def meta_lines(meta: dict[str, Any]) -> str:
    """The meta block as markdown bullet lines."""
    keys = ("device", "dtype", "torch", "threads", "load_average", "command", "interrupted")
    return "".join(f"- {k}: {meta[k]}\n" for k in keys if meta.get(k) is not None)


RECORD = ".lowrank-lm-bench.json"
NOT_OURS = "choose a new or empty --out (or one that bench wrote)"


def _legacy_bench_dir(folder: Path) -> set[str] | None:
    """A folder of an older bench (no record): the NAME.json results there, their NAME.md and plots."""
    names: set[str] = set()
    for path in folder.glob("*.json"):
        try:
            ours = set(json.loads(path.read_text())) == {"meta", "rows"}
        except (OSError, ValueError, TypeError):
            ours = False
        if ours:
            names |= {path.name, f"{path.stem}.md"} | {p.name for p in folder.glob(f"{path.stem}-*.png")}
    return names or None


def bench_ownership(out: Path) -> Ownership:
    """What bench owns in an --out folder (lowrank_lm.ownership)."""
    return Ownership(out, RECORD, "lowrank-lm bench", _legacy_bench_dir)


def prepare_out_dir(path: str | None) -> Path | None:
    """Create the output folder, or raise a one-line UserError when it cannot be."""
    if path is None:
        return None
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror}; pass a writable --out") from None
    return out


def write_results(out: Path, name: str, meta: dict[str, Any], rows: list[dict[str, Any]], table: str) -> list[Path]:
    """Write NAME.json (meta + rows) and NAME.md (meta + table) under ``out``; return the paths."""
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md_path.write_text(f"# {name}\n\n{meta_lines(meta)}\n{table}")
    return [json_path, md_path]


def pyplot() -> Any | None:
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: plots skipped (pip install 'lowrank-lm[analysis]' for matplotlib)", file=sys.stderr)
        return None
    return plt


def _run_from_the_cli() -> bool:
    """Whether this process is ``lowrank-lm ...`` or ``python -m lowrank_lm ...`` (not, e.g., pytest)."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return program is not None and (program.name == "lowrank-lm" or program.parent.name == "lowrank_lm")
