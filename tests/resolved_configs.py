"""Every config file in the repository, resolved: the text ``tests/test_resolved_configs.py`` compares with the
dump committed in ``tests/data/resolved_configs.txt``.

A preset is dumped as the YAML ``save_config`` writes; a sweep file as its expanded plan (each run's names,
accounting and resolved config). A change to the configuration machinery must leave this text byte-equal;
regenerate the dump (``python -m tests.resolved_configs > tests/data/resolved_configs.txt``) only when a
config's meaning changes on purpose, and say so in the commit.
"""

from __future__ import annotations

import io
from pathlib import Path

import yaml

from lowrank_lm.config import config_to_dict
from lowrank_lm.launch.sweep import load_sweep
from lowrank_lm.resolve import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SWEEPS = CONFIGS / "sweeps"


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def preset_text(path: Path) -> str:
    """The resolved config of one preset, as YAML."""
    return _yaml(config_to_dict(load_config(path)))


def sweep_text(path: Path) -> str:
    """The expanded plan of one sweep file: every run with its accounting and resolved config."""
    plan = load_sweep(path)
    out = io.StringIO()
    out.write(_yaml({"name": plan.name, "out_dir": str(plan.out_dir), "notes": plan.notes,
                     "cluster": plan.cluster}))
    for run in plan.runs:
        row = {k: v for k, v in run.row().items() if k != "out_dir"}
        row.update(kind=run.kind, ffn_fraction=run.ffn_fraction, run_dir=str(run.run_dir))
        out.write(f"--- run {run.name}\n{_yaml(row)}{_yaml(config_to_dict(run.cfg))}")
    return out.getvalue()


def dump() -> str:
    """Every preset and every sweep plan under configs/, in path order."""
    parts = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        rel = path.relative_to(ROOT)
        text = sweep_text(path) if path.parent == SWEEPS else preset_text(path)
        parts.append(f"=== {rel}\n{text}")
    return "".join(parts)


if __name__ == "__main__":
    print(dump(), end="")
