"""scripts/lr_transfer_table.py: the optimum per width, its shift and the seed noise, on synthetic sweeps whose
losses are parabolas in log learning rate with known vertices."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATES = [6.25e-4 * 2**k for k in range(7)]
FIELDS = ["name", "series", "size", "structure", "fraction", "lr", "seed", "loss", "status"]


def load_script():
    spec = importlib.util.spec_from_file_location("lr_transfer_table", ROOT / "scripts" / "lr_transfer_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def write_sweep(folder: Path, optimum: dict[tuple[str, int, int], float]) -> None:
    """results.csv with loss = 5 + 0.1 (log2(lr / 6.25e-4) - optimum)^2 per (label, width, seed)."""
    folder.mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for (label, width, seed), x0 in optimum.items():
            kind = label.split("-")[0]
            for lr in RATES:
                loss = 5 + 0.1 * (math.log2(lr / RATES[0]) - x0) ** 2
                tag = f"{lr:.4g}".replace("e-0", "e-")
                w.writerow({"name": f"w{width}-{label}-lr{tag}-seed{seed}", "series": f"{label}-lr{tag}",
                            "size": f"w{width}", "structure": kind, "fraction": "" if kind == "dense" else 0.32,
                            "lr": lr, "seed": seed, "loss": loss, "status": "done"})
        w.writerow({"name": "w64-dense-lr9e-2-seed1005", "series": "dense-lr9e-2", "size": "w64",
                    "structure": "dense", "fraction": "", "lr": 0.09, "seed": 1005, "loss": "",
                    "status": "failed"})  # not finished: not read


def test_vertices_shifts_and_seed_noise(tmp_path, capsys, monkeypatch):
    script = load_script()
    write_sweep(tmp_path / "std", {("dense", 64, 1005): 3.3, ("dense", 128, 1005): 2.1, ("dense", 256, 1005): 0.7,
                                   ("lowrank-32", 64, 1005): 3.0, ("lowrank-32", 128, 1005): 2.0,
                                   ("lowrank-32", 256, 1005): 1.0})
    write_sweep(tmp_path / "mup", {("dense", 64, 1005): 4.2, ("dense", 64, 2005): 4.6, ("dense", 128, 1005): 4.0,
                                   ("dense", 256, 1005): 3.9, ("lowrank-32", 64, 1005): 5.4,
                                   ("lowrank-32", 64, 2005): 5.4, ("lowrank-32", 128, 1005): 6.4,
                                   ("lowrank-32", 256, 1005): 7.2})
    cells = script.read_sweep(tmp_path / "std", "standard") + script.read_sweep(tmp_path / "mup", "mup")
    assert len(cells) == 6 * 7 + 8 * 7 and {c.label for c in cells} == {"dense", "lowrank-32"}
    t = script.transfer(cells, "dense", "standard", [64, 128, 256], [1005, 2005])
    assert [round(o[1], 9) for o in t.optima] == [3.3, 2.1, 0.7]  # a parabola's vertex, exactly
    assert [o[0] for o in t.optima] == [3, 2, 1] and t.grid_shift == -2 and t.vertex_shift == pytest.approx(-2.6)
    assert t.seed_loss_diff is None  # no second seed in this sweep
    m = script.transfer(cells, "dense", "mup", [64, 128, 256], [1005, 2005])
    assert m.vertex_shift == pytest.approx(-0.3) and m.seed_optimum_diff == pytest.approx(0.4)
    expected = sum(abs((math.log2(r / RATES[0]) - 4.2) ** 2 - (math.log2(r / RATES[0]) - 4.6) ** 2) * 0.1
                   for r in RATES) / 7
    assert m.seed_loss_diff == pytest.approx(expected)
    edge = script.transfer(cells, "lowrank-32", "mup", [64, 128, 256], [1005, 2005])
    assert [o[2] for o in edge.optima] == ["", ">", ">"]  # 6.4 and 7.2 lie beyond the last rate (index 6)
    monkeypatch.setattr("sys.argv", ["lr_transfer_table.py", "--standard", str(tmp_path / "std"), "--mup",
                                     str(tmp_path / "mup"), "--out", str(tmp_path / "out")])
    script.main()
    text = capsys.readouterr().out
    assert "| dense | mup | 0.01 | 0.01 | 0.01 | +0 | -0.30 | " in text
    assert "| lowrank-32 | mup | 0.02 | >0.04 | >0.04 | +1 | +0.60 | 0.0000 | +0.00 |" in text
    assert "| dense | standard | 0.005 | 0.0025 | 0.00125 | -2 | -2.60 |  |  |" in text
    # best loss per width: the grid point nearest each vertex (3.3, 2.1, 0.7; 5.4, 6.4 and 7.2 beyond the grid)
    assert "| dense | standard | 5.0090 | 5.0010 | 5.0090 |" in text
    assert "| lowrank-32 | mup | 5.0160 | 5.0160 | 5.1440 |" in text
    assert (tmp_path / "out" / "table.md").read_text() == text
    assert (tmp_path / "out" / "std.csv").read_bytes() == (tmp_path / "std" / "results.csv").read_bytes()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "out" / "loss_vs_lr.png").read_bytes()[:4] == b"\x89PNG"
