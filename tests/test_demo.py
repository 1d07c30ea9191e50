"""The demo: its printed table is the table of its results.json, it reuses only runs of the same settings,
and the README's demo table is the one `make demo` recorded in docs/results/demo.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lowrank_lm.config import save_config
from lowrank_lm.demo import demo_table

from .conftest import tiny_run_config
from .ecosystem import cli

ROOT = Path(__file__).resolve().parents[1]


def _config_file(tmp_path: Path, tiny_data: Path, *overrides: str) -> str:
    path = tmp_path / f"demo-{len(list(tmp_path.glob('demo-*.yaml')))}.yaml"
    save_config(tiny_run_config(tiny_data, tmp_path / "unused", "train.checkpoint_interval=", *overrides), path)
    return str(path)


def test_demo_prints_the_table_of_its_json_and_reuses_only_the_same_experiment(tmp_path, tiny_data):
    out = tmp_path / "demo"
    config = _config_file(tmp_path, tiny_data)
    code, stdout, _ = cli("demo", config, "--out", str(out))
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in record["rows"]] == ["dense", "lowrank-32"]
    assert all(r["tokens"] == 5120 for r in record["rows"])
    assert demo_table(record) in stdout
    assert "| lowrank-32 | " in stdout

    code, again, _ = cli("demo", config, "--out", str(out))  # same settings: both runs reused, same table
    assert code == 0 and again.count("finished earlier with the same settings") == 2
    assert "== training" not in again
    assert json.loads((out / "results.json").read_text())["rows"] == record["rows"]

    fewer = _config_file(tmp_path, tiny_data, "train.tokens=2560")
    code, stdout, stderr = cli("demo", fewer, "--out", str(out))
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1
    assert f"{out / 'dense'} holds a run trained with other settings (train.tokens=5120 there, 2560 here)" in stderr
    assert "pass --overwrite" in stderr

    (out / "dense" / "notes.txt").write_text("mine")  # --overwrite retrains, removing only what runs write
    code, stdout, _ = cli("demo", fewer, "--out", str(out), "--overwrite")
    assert code == 0 and stdout.count("== training") == 2
    assert (out / "dense" / "notes.txt").read_text() == "mine"
    assert all(r["tokens"] == 2560 for r in json.loads((out / "results.json").read_text())["rows"])


def test_the_readme_demo_table_is_the_recorded_demo_output():
    record = json.loads((ROOT / "docs/results/demo.json").read_text())
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"^\| model \| params \|.*?(?=\n\n)", readme, flags=re.S | re.M)
    assert found, "the README has no demo table"
    assert found.group(0) == demo_table(record), (
        "README's demo table is not docs/results/demo.json's: after `make demo`, copy runs/demo/results.json "
        "there and run python scripts/readme_demo_table.py")
    assert record["config"]["train"]["tokens"] == 2_000_000 and record["config"]["model"]["hidden_dim"] == 128
    assert [r["name"] for r in record["rows"]] == ["dense", "lowrank-32"]

