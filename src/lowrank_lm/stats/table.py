"""The results table that ``sweep`` writes and ``fit`` reads: CSV (and JSON), one row per run.

``fit`` needs only the columns ``series``, ``flops`` (or whichever x column is chosen) and ``loss``;
everything else is carried along. An optional ``loss_err`` column gives each loss's stated one-sigma
error (the paper dataset has one); an optional ``status`` column lets unfinished runs sit in the table.
Columns added later (``lr``, the run's peak learning rate) read as empty from tables written before them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lowrank_lm.atomic import write_text_atomic
from lowrank_lm.errors import UserError

# Column order of the sweep's results table (fit ignores the ones it does not use).
RESULT_COLUMNS: tuple[str, ...] = (
    "name", "series", "size", "structure", "fraction", "budget", "params", "params_non_embedding",
    "params_ffn", "tokens", "epochs", "flops", "flops_6n", "lr", "seed", "loss", "ppl", "tokens_per_s", "wall_s",
    "steps", "status", "out_dir",
)


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so concurrent shards never leave half a table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def write_csv(rows: Iterable[dict[str, Any]], path: str | Path, columns: Sequence[str] = RESULT_COLUMNS) -> None:
    """Write rows as CSV with the given columns (missing values empty, floats with full precision)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    _atomic_write(Path(path), buf.getvalue())


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (indented, for people and diffs)."""
    _atomic_write(Path(path), json.dumps(obj, indent=2) + "\n")


def _number(value: str, column: str, line: int, path: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise UserError(f"{path}:{line}: column {column} holds {value!r}, not a number; fix or remove the row") \
            from None
    if not math.isfinite(out):
        raise UserError(f"{path}:{line}: column {column} is {value!r}; give a finite number or leave it empty")
    return out


def _csv_text(p: Path) -> str:
    """The text of a results CSV; a binary or non-UTF-8 file is one line naming it, not a decoder traceback."""
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not part of the first column
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not a UTF-8 text CSV (byte {e.start}); give the CSV `lowrank-lm sweep` writes, "
                        "or export the table as CSV (UTF-8)") from None
    if "\0" in text:
        raise UserError(f"{p} is a binary file, not a CSV; give the CSV `lowrank-lm sweep` writes")
    return text


def read_points(path: str | Path, x_column: str = "flops") -> tuple[list[dict[str, Any]], int]:
    """Rows of a results CSV that carry a loss: (rows with ``x``, ``loss``, ``loss_err`` as floats, skipped).

    A row is skipped (and counted) when its loss is empty or its ``status`` column says it is not done;
    a row with a loss but a missing or non-positive x, or a non-positive loss, is an error, because it
    would silently distort the fit.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"results file not found: {p}; give a CSV from `lowrank-lm sweep` (or `paper`)")
    with io.StringIO(_csv_text(p), newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("series", x_column, "loss") if c not in header]
        if missing:
            raise UserError(f"{p}: missing column(s) {', '.join(missing)}; the table needs at least "
                            f"series, {x_column}, loss (has: {', '.join(header) or 'nothing'})")
        rows: list[dict[str, Any]] = []
        skipped = 0
        for line, raw in enumerate(reader, start=2):
            status = (raw.get("status") or "done").strip()
            if not (raw.get("loss") or "").strip() or status not in ("done", ""):
                skipped += 1
                continue
            series = (raw.get("series") or "").strip()
            if not series:
                raise UserError(f"{p}:{line}: empty series name; name the series the row belongs to")
            row: dict[str, Any] = dict(raw)
            row["series"] = series
            row["x"] = _number((raw.get(x_column) or "").strip(), x_column, line, str(p))
            row["loss"] = _number(raw["loss"].strip(), "loss", line, str(p))
            err = (raw.get("loss_err") or "").strip()
            row["loss_err"] = _number(err, "loss_err", line, str(p)) if err else 0.0
            if row["x"] <= 0 or row["loss"] <= 0:
                raise UserError(f"{p}:{line}: {x_column} and loss must be positive for a log-space fit "
                                f"(got {row['x']}, {row['loss']})")
            rows.append(row)
    if not rows:
        raise UserError(f"{p}: no rows with a loss to fit (skipped {skipped} unfinished); run the sweep first")
    return rows, skipped


def is_flop_budget(label: str) -> bool:
    """True for a FLOP budget's label (``C3e14``, see :func:`lowrank_lm.launch.sweep.budget_label`)."""
    return label.startswith("C") and label[1:2].isdigit()


def split_token_budgets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose series spans several token budgets, renamed ``SERIES@BUDGET``: a compute-law curve holds one
    budget (its points differ in size), while the joint law takes every budget of a structure at once."""
    budgets: dict[str, set[str]] = {}
    for r in rows:
        b = str(r.get("budget") or "").strip()
        if b and not is_flop_budget(b):
            budgets.setdefault(r["series"], set()).add(b)
    return [{**r, "series": f"{r['series']}@{str(r['budget']).strip()}"} if len(budgets.get(r["series"], ())) > 1
            else r for r in rows]


def isoflop_frontier(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Each series' lowest-loss row per FLOP budget, and how many rows that leaves out.

    An IsoFLOP design trains several sizes at each budget; a curve in compute alone (the compute and shared
    laws) must see one loss per budget, the best a structure reached with that compute: the lower envelope
    L*(C) = min over sizes of L(N, C). Fitting every size as a point of one L(C) would mix sizes that are far
    from optimal into the curve. Rows without a FLOP budget (token budgets, plain sweeps) are kept as they are;
    call it on seed means, so that the best size is chosen by its mean.
    """
    best: dict[tuple[str, str], dict[str, Any]] = {}
    kept: list[dict[str, Any]] = []
    for r in rows:
        budget = str(r.get("budget") or "").strip()
        if not is_flop_budget(budget):
            kept.append(r)
            continue
        key = (r["series"], budget)
        if key not in best or r["loss"] < best[key]["loss"]:
            best[key] = r
    kept += best.values()
    return kept, len(rows) - len(kept)


def budget_of(series: str) -> str | None:
    """The token budget a split series name carries (``dense@t2M`` -> ``t2M``), else None."""
    return series.rsplit("@", 1)[1] if "@" in series else None
