"""`lowrank-lm compare`: runs and folders of runs side by side, as a table, JSON and loss plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowrank_lm.train import curves
from lowrank_lm.train.summary import RunSummary

from .ecosystem import cli


def make_run(folder: Path, params: int, loss: float, tokens: int = 4096, finished: bool = True) -> Path:
    """A run folder as the trainer leaves it: config.yaml, metrics.jsonl and (when finished) summary.json."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {}\n")
    records = [{"step": s, "tokens": s * 512, "loss": loss + 2.0 / s, "lr": 1e-3} for s in range(1, 9)]
    records.append({"step": 8, "tokens": tokens, "val_loss": loss, "val_ppl": 2.718 ** loss, "val_tokens": 1024})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        RunSummary(name=folder.name, structure="lowrank" if params < 2_000_000 else "dense", params=params,
                   params_non_embedding=params // 2, params_ffn=params // 4, tokens=tokens, unique_tokens=tokens,
                   steps=8, train_flops=6.0 * params * tokens, train_s=120.0, wall_s=125.0, tokens_per_s=1234.5,
                   skipped_steps=0, peak_memory_mb=100.0, device="cpu", world_size=1, precision="fp32",
                   final_val_loss=loss, final_val_ppl=2.718 ** loss, val_tokens=1024).write(folder / "summary.json")
    return folder


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    a = make_run(tmp_path / "dense", 2_500_000, 5.05)
    b = make_run(tmp_path / "lowrank", 1_570_000, 5.02)
    sweep = tmp_path / "sweep"
    make_run(sweep / "s-dense", 3_000_000, 4.9)
    make_run(sweep / "s-lowrank", 1_900_000, 4.95)
    make_run(sweep / "s-half", 1_000_000, 9.0, finished=False)
    return [a, b, sweep]


def test_compare_prints_one_row_per_finished_run(runs, capsys):
    code, out, err = cli("compare", *map(str, runs))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("| run | FFN | params | FFN params | tokens | training FLOPs | tokens/s | val loss | val ppl "
                        "| wall time |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| dense", "| lowrank", "| sweep/s-dense",
                                                             "| sweep/s-lowrank"]
    assert lines[3] == ("| lowrank | lowrank | 1.57M | 392k | 4,096 | 3.858e+10 | 1,234 | 5.0200 | 151.33 | "
                        "2m05s |")
    assert "4.9000 (best)" in lines[4]
    assert "skipped 1 unfinished run(s): s-half" in err


def test_compare_json_and_out_folder_with_plots(runs, tmp_path):
    code, out, _ = cli("compare", *map(str, runs), "--json")
    rows = json.loads(out)
    assert [(r["run"], r["params"], r["final_val_loss"]) for r in rows][:2] == [("dense", 2_500_000, 5.05),
                                                                                 ("lowrank", 1_570_000, 5.02)]
    dest = tmp_path / "cmp"
    code, _, _ = cli("compare", *map(str, runs), "--out", str(dest))
    assert code == 0
    assert sorted(p.name for p in dest.iterdir()) == ["compare.json", "compare.md", "loss_vs_flops.png",
                                                      "loss_vs_tokens.png"]
    assert (dest / "loss_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((dest / "compare.json").read_text())
    assert record["runs"] == rows
    (dest / "notes.txt").write_text("mine")
    assert cli("compare", str(runs[0]), "--out", str(dest))[0] == 0  # our own folder: replaced, notes kept
    assert (dest / "notes.txt").read_text() == "mine"
    assert json.loads((dest / "compare.json").read_text())["runs"][0]["run"] == "dense"


def test_compare_refuses_a_foreign_out_folder_and_non_runs(runs, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "compare.md").write_text("theirs")
    code, _, err = cli("compare", str(runs[0]), "--out", str(foreign))
    assert code == 2 and err.count("\n") == 1
    assert "is not empty and was not written by lowrank-lm compare (no compare.json)" in err
    assert (foreign / "compare.md").read_text() == "theirs"
    code, _, err = cli("compare", str(tmp_path / "foreign"))
    assert code == 2 and "holds no finished run" in err


def test_without_matplotlib_compare_writes_the_tables_and_says_so(runs, tmp_path, monkeypatch):
    assert cli("compare", str(runs[0]), "--out", str(tmp_path / "cmp"))[0] == 0  # with plots
    (tmp_path / "cmp" / "loss_vs_flops.png").unlink()
    (tmp_path / "cmp" / "loss_vs_flops.png").write_bytes(b"a plot of my own")
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    record["files"].remove("loss_vs_flops.png")  # as if an earlier compare had not written it
    (tmp_path / "cmp" / "compare.json").write_text(json.dumps(record))
    monkeypatch.setattr(curves, "pyplot", lambda: None)  # the loss plots are drawn by train/curves.py
    code, _, err = cli("compare", str(runs[1]), "--out", str(tmp_path / "cmp"))
    assert code == 0 and "plots skipped (pip install 'lowrank-lm[analysis]'" in err
    # our stale loss-vs-tokens plot (of other runs) is gone; the file compare did not write stays
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.json", "compare.md",
                                                                     "loss_vs_flops.png"]
    assert (tmp_path / "cmp" / "loss_vs_flops.png").read_bytes() == b"a plot of my own"
