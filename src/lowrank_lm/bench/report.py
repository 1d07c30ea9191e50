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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

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


def _proc_stat_cpu_line() -> str:
    return Path("/proc/stat").read_text().split("\n", 1)[0]


def busy_cores(interval: float = 0.25, read: Callable[[], str] = _proc_stat_cpu_line) -> float | None:
    """How many cores other processes keep busy right now: /proc/stat sampled over ``interval`` s.

    It counts the whole machine (or the whole host, in a container), this process included, so call it
    while this process is idle: then it sees the others. Unlike the load average, it does not remember
    a process that finished a minute ago (such as the previous stage of a benchmark script). None where
    /proc/stat is unavailable.
    """
    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in read().split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 4:
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    first = sample()
    if first is None:
        return None
    time.sleep(interval)
    second = sample()
    if second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * (total - idle) / total


def contention_warning(busy: float, cores: int, threads: int, consequence: str) -> str | None:
    """The one-line warning when ``busy`` cores (held by other processes) leave too few idle cores for our
    ``threads``, or None. Busy cores stall every multi-threaded op at its barrier, not just one thread."""
    if busy <= 0.5 or busy <= cores - threads:
        return None
    hint = " (--threads 1 avoids the worst stalls)" if threads > 1 else ""
    return f"warning: other processes keep {busy:.1f} of {cores} cores busy; {consequence}{hint}"


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
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


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
