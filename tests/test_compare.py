"""`lowrank-lm compare`: runs and folders of runs side by side, as a table, JSON and loss plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lowrank_lm import plotting
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


def test_compare_prints_one_row_per_configuration(runs, capsys):
    code, out, err = cli("compare", *map(str, runs))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("| group | FFN | params | tokens | seeds | val loss mean [95% CI] | seed sd | vs dense "
                        "[95% CI] | test | tokens/s |")
    # sorted by loss, labels without folder prefixes; one seed each: no seed noise, no intervals
    assert [line.split(" | ")[0] for line in lines[2:6]] == ["| s-dense", "| s-lowrank", "| lowrank", "| dense"]
    assert lines[4] == ("| lowrank | lowrank | 1.57M | 4,096 | 1 | 5.0200 |  | -0.0300 | no interval (one seed each) | "
                        "1,234 |")
    assert lines[5] == "| dense | dense | 2.5M | 4,096 | 1 | 5.0500 |  |  |  | 1,234 |"  # the baseline itself
    assert lines[6].startswith("seed noise: not measured")
    assert "skipped 1 unfinished run(s): s-half" in err


def test_compare_json_and_out_folder_with_plots(runs, tmp_path):
    code, out, _ = cli("compare", *map(str, runs), "--json")
    rows = json.loads(out)["runs"]
    assert [(r["run"], r["params"], r["final_val_loss"]) for r in rows][:2] == [("dense", 2_500_000, 5.05),
                                                                                 ("lowrank", 1_570_000, 5.02)]
    dest = tmp_path / "cmp"
    code, _, _ = cli("compare", *map(str, runs), "--out", str(dest))
    assert code == 0
    assert sorted(p.name for p in dest.iterdir()) == ["compare.json", "compare.md", "loss_vs_flops.png",
                                                      "loss_vs_tokens.png"]
    assert (dest / "loss_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((dest / "compare.json").read_text())
    assert record["runs"] == rows and record["groups"][0]["group"] == "s-dense"
    md = (dest / "compare.md").read_text()
    assert md.startswith("## Configurations (mean over seeds)") and "## Runs" in md and "4.9000 (best)" in md
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
    monkeypatch.setattr(plotting, "pyplot", lambda: None)  # every plot of compare asks plotting.pyplot
    code, _, err = cli("compare", str(runs[1]), "--out", str(tmp_path / "cmp"))
    assert code == 0 and "plots skipped (pip install 'lowrank-lm[analysis]'" in err
    # our stale loss-vs-tokens plot (of other runs) is gone; the file compare did not write stays
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.json", "compare.md",
                                                                     "loss_vs_flops.png"]
    assert (tmp_path / "cmp" / "loss_vs_flops.png").read_bytes() == b"a plot of my own"


def make_seeded(folder: Path, structure: str, seed: int, loss: float, slowed: bool = False) -> Path:
    """A run of a sweep with seeds: config.yaml with the seed, the summary, and train.log (busy-core warning)."""
    make_run(folder, 3_000_000 if structure == "dense" else 1_500_000, loss)
    (folder / "config.yaml").write_text(f"model:\n  hidden_dim: 64\n  ffn:\n    kind: {structure}\n"
                                        f"train:\n  seed: {seed}\n  out_dir: {folder}\n")
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "structure": structure}))
    if slowed:
        (folder / "train.log").write_text("warning: other processes keep 2.0 of 2 cores busy; this run will be "
                                          "several times slower than on an idle machine\n")
    return folder


@pytest.fixture
def seeded(tmp_path) -> Path:
    sweep = tmp_path / "sweep"
    for seed, loss in zip((1, 2, 3), (5.00, 5.10, 5.05)):
        make_seeded(sweep / f"s1-dense-seed{seed}", "dense", seed, loss)
    for seed, loss in zip((1, 2, 3), (4.90, 5.02, 4.93)):
        make_seeded(sweep / f"s1-lowrank-32-seed{seed}", "lowrank", seed, loss, slowed=seed == 2)
    for seed, loss in zip((7, 8), (5.20, 5.30)):
        make_seeded(sweep / f"s1-blockdense-32-seed{seed}", "blockdense", seed, loss)
    make_seeded(sweep / "s1-cola-32", "cola", 1, 5.5)
    return sweep


def test_seed_groups_means_intervals_and_differences(seeded):
    from scipy.stats import t

    code, out, _ = cli("compare", str(seeded), "--json", "--baseline", "dense")
    assert code == 0
    groups = {g["group"]: g for g in json.loads(out)["groups"]}
    assert list(groups) == ["s1-lowrank-32", "s1-dense", "s1-blockdense-32", "s1-cola-32"]  # best first
    low = groups["s1-lowrank-32"]
    assert low["seeds"] == [1, 2, 3] and low["mean"] == pytest.approx(14.85 / 3)
    sd = float(np.std([4.90, 5.02, 4.93], ddof=1))
    half = t.ppf(0.975, 2) * sd / 3 ** 0.5
    assert low["ci"] == pytest.approx([14.85 / 3 - half, 14.85 / 3 + half])
    # paired on seeds 1-3: differences -0.10, -0.08, -0.12
    d = low["vs_baseline"]
    assert d["test"] == "paired t" and d["diff"] == pytest.approx(-0.10)
    half = t.ppf(0.975, 2) * 0.02 / 3 ** 0.5
    assert d["ci"] == pytest.approx([-0.10 - half, -0.10 + half])
    assert d["p"] == pytest.approx(2 * t.sf(0.10 / (0.02 / 3 ** 0.5), 2))
    # other seeds: Welch, with the Welch-Satterthwaite degrees of freedom
    w = groups["s1-blockdense-32"]["vs_baseline"]
    va, vb = 0.005 / 2, 0.0025 / 3
    dof = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 2)
    assert w["test"] == "Welch t" and w["diff"] == pytest.approx(0.20)
    assert w["ci"][1] - w["diff"] == pytest.approx(t.ppf(0.975, dof) * (va + vb) ** 0.5)
    assert groups["s1-cola-32"]["vs_baseline"]["test"] == "t on the pooled seed noise"
    assert groups["s1-dense"]["vs_baseline"] is None
    assert low["slowed_runs"] == ["sweep/s1-lowrank-32-seed2"] and groups["s1-dense"]["slowed_runs"] == []
    noise = json.loads(out)["seed_noise"]
    assert noise["dof"] == 2 + 2 + 1 and noise["cells"] == 3


def test_identical_differences_over_seeds_need_no_t_test(tmp_path):
    """Every seed moved by the same amount: no t test (its variance is zero; scipy would warn and give nan),
    the difference itself with a zero-width interval, and no warning on the console."""
    import warnings

    for seed, loss in ((1, 5.0), (2, 5.1)):
        make_seeded(tmp_path / f"s1-dense-seed{seed}", "dense", seed, loss)
        make_seeded(tmp_path / f"s1-lowrank-32-seed{seed}", "lowrank", seed, loss - 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, out, _ = cli("compare", str(tmp_path), "--json", "--baseline", "dense")
        assert cli("compare", str(tmp_path), "--baseline", "dense")[0] == 0
    assert code == 0
    d = next(g for g in json.loads(out)["groups"] if g["group"] == "s1-lowrank-32")["vs_baseline"]
    assert d["test"] == "paired, no spread between seeds (no t test)" and d["p"] is None
    assert d["diff"] == pytest.approx(-0.1) and d["ci"] == [d["diff"], d["diff"]]


def test_seed_groups_table_and_figure(seeded, tmp_path):
    code, out, _ = cli("compare", str(seeded))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split(" | ")[7] == "vs s1-dense [95% CI]"
    assert lines[2].startswith("| s1-lowrank-32 | lowrank | 1.5M | 4,096 | 3 | 4.9500 [")
    assert "| -0.1000 [-0.1497, -0.0503] | paired t, p = 0.013 | 1,234* |" in lines[2]
    assert any(line.startswith("run-to-run noise (seed to seed, pooled over 3 cells, 5 degrees") for line in lines)
    assert any(line.startswith("* tokens/s of sweep/s1-lowrank-32-seed2: other processes") for line in lines)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowrank_lm.compare_plots import draw_groups
    from lowrank_lm.run_compare import find_runs
    from lowrank_lm.run_groups import compare_groups

    groups, _ = compare_groups(find_runs([str(seeded)])[0])
    fig = draw_groups(groups, "tokens", plt)
    ax = fig.axes[0]
    assert len(ax.collections) == 3  # a seed band for each group with two or more seeds
    assert len(ax.lines) == 3 * 4  # per group: raw mean (faint), smoothed mean, validation points
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "s1-lowrank-32 (3 seeds, val 4.950)" and labels[-1] == "s1-cola-32 (1 seed, val 5.500)"
    assert ax.get_xscale() == "linear"  # 512 to 4,096 tokens: under a decade
    plt.close(fig)


def test_ema_smooths_long_curves_and_leaves_short_ones():
    from lowrank_lm.plotting import ema

    short = np.array([7.0, 6.0, 5.5, 5.2])
    assert np.array_equal(ema(short), short)  # 4 points: nothing to smooth, no lag
    noisy = 5.0 + 0.1 * np.sin(np.arange(400) * 3.0)
    smooth = ema(noisy)
    assert smooth[0] == noisy[0] and np.std(smooth[100:]) < 0.2 * np.std(noisy[100:])


def test_compare_draws_the_unigram_baseline_of_the_runs_data(tiny_data, tmp_path, monkeypatch):
    """Runs that trained on one prepared data set get its unigram loss (add-one smoothed training counts,
    counted here from the shard files) in compare.md, compare.json and as the figures' dashed line."""
    import matplotlib.pyplot as plt

    import lowrank_lm.compare_plots as cp
    from lowrank_lm.compare_plots import draw_groups

    manifest = json.loads((tiny_data / "manifest.json").read_text())
    shards = {s: np.concatenate([np.fromfile(tiny_data / x["path"], dtype=manifest["dtype"])
                                 for x in manifest["shards"] if x["split"] == s]) for s in ("train", "val")}
    counts = np.bincount(shards["train"], minlength=manifest["vocab_size"]) + 1.0
    expected = -float(np.mean(np.log(counts / counts.sum())[shards["val"]]))
    data = f"data: {{dir: {tiny_data}, tokenizer: bpe-512, val_tokens: 8192, max_tokens: 120000}}\n"
    for name, params in (("dense", 2_500_000), ("lowrank", 1_500_000)):
        (make_run(tmp_path / "runs" / name, params, 5.0) / "config.yaml").write_text(data)
    dest = tmp_path / "cmp"
    assert cli("compare", str(tmp_path / "runs"), "--out", str(dest))[0] == 0
    record = json.loads((dest / "compare.json").read_text())
    assert record["unigram_loss"] == pytest.approx(expected, rel=1e-12)
    code, out, _ = cli("compare", str(tmp_path / "runs"), "--json")
    assert code == 0 and json.loads(out)["unigram_loss"] == record["unigram_loss"]
    assert f"unigram baseline (token frequencies alone): val loss {expected:.4f}" in (dest / "compare.md").read_text()

    drawn: list = []

    def keep(*args, **kwargs):
        fig = draw_groups(*args, **kwargs)
        drawn.append(fig)
        return fig

    monkeypatch.setattr(cp, "draw_groups", keep)
    assert cli("compare", str(tmp_path / "runs"), "--out", str(dest))[0] == 0
    assert len(drawn) == 2
    for fig in drawn:
        assert fig.axes[0].lines[-1].get_ydata()[0] == pytest.approx(expected, rel=1e-12)
        plt.close(fig)

    make_run(tmp_path / "runs" / "other", 2_000_000, 5.0)  # default config.yaml: no data settings
    dest2 = tmp_path / "cmp2"
    assert cli("compare", str(tmp_path / "runs"), "--out", str(dest2))[0] == 0
    assert json.loads((dest2 / "compare.json").read_text())["unigram_loss"] is None
    note = "no unigram baseline: runs/other has no data settings in its config.yaml"
    assert note in (dest2 / "compare.md").read_text()
