"""Commands that replace their own output files refuse, in one line and before any work, a file of the same
name that they did not write (bench --out, lm-eval --output); earlier output of their own is replaced."""

from __future__ import annotations

import io
import json

import pytest

from .ecosystem import cli


@pytest.mark.parametrize("name,content,message", [
    ("ffn.md", "# my notes\n", "is not empty and was not written by lowrank-lm bench"),
    ("ffn.json", '{"mine": 1}', "is not empty and was not written by lowrank-lm bench"),
    ("ffn.json", "not json", "is not empty and was not written by lowrank-lm bench"),
])
def test_bench_refuses_to_replace_files_it_did_not_write(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    code, out, err = cli("bench", "ffn", "--widths", "64", "--out", str(tmp_path))
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1
    assert (tmp_path / name).read_text() == content


def test_bench_replaces_its_own_results(tmp_path):
    argv = ["bench", "ffn", "--widths", "64", "--kinds", "dense,lowrank", "--fractions", "0.5", "--tokens", "32",
            "--rounds", "1", "--min-round-s", "0.001", "--out", str(tmp_path)]
    assert cli(*argv)[0] == 0
    assert cli(*argv)[0] == 0  # the second run replaces the first one's ffn.json / ffn.md
    assert set(json.loads((tmp_path / "ffn.json").read_text())) == {"meta", "rows"}


def test_lm_eval_refuses_an_output_file_it_did_not_write(tmp_path):
    pytest.importorskip("lm_eval")
    target = tmp_path / "results.json"
    target.write_text('{"my": "data"}')
    code, _, err = cli("lm-eval", str(tmp_path / "no-run"), "--tasks", "x", "--output", str(target))
    assert code == 2 and f"--output {target} exists and is not an lm-eval record" in err
    assert target.read_text() == '{"my": "data"}'


def test_prepare_force_replaces_only_what_prepare_wrote(tmp_path):
    from .ecosystem import sentences

    source = tmp_path / "text.txt"
    source.write_text("\n\n".join(" ".join(sentences(12, seed=i)) for i in range(40)))
    data = tmp_path / "data"
    common = [f"data.source={source}", "data.tokenizer=bpe-300", f"data.dir={data}", "data.num_workers=1"]
    assert cli("prepare", *common, "data.val_tokens=400", "--quiet")[0] == 0
    (data / "notes.txt").write_text("mine")
    code, _, err = cli("prepare", *common, "data.val_tokens=300", "--quiet")
    assert code == 2 and "--force" in err  # other settings in a prepared folder: refused without --force
    assert cli("prepare", *common, "data.val_tokens=300", "--quiet", "--force")[0] == 0
    assert json.loads((data / "manifest.json").read_text())["tokens"]["val"] == 300
    assert (data / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- ours or refused, verb by verb
# Each case: a folder holding a file of the user's is refused in one line (exit 2) that names the folder and
# the way out, and the user's file is byte-identical afterwards.


def _one_line_refusal(code: int, err: str, *needles: str) -> None:
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("overwrite", [False, True])
def test_train_refuses_a_folder_that_is_not_a_run(tiny_data, tmp_path, overwrite):
    """The user's own config.yaml (without --overwrite: replaced by the resolved dump before) and a prepared
    data folder (with --overwrite: its tokenizer was deleted before) both stay as they were."""
    from lowrank_lm.errors import UserError
    from lowrank_lm.train import run_training

    from .conftest import tiny_run_config

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("# my experiment\nbase: ../x.yaml\n")
    for folder in (mine, tiny_data):
        before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        with pytest.raises(UserError, match=f"{folder} is not empty and was not written by a training run "
                                            r"\(no \.lowrank-lm-run\.json\); choose another train\.out_dir"):
            run_training(tiny_run_config(tiny_data, folder), overwrite=overwrite)
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
        assert not (folder / ".lock").exists() and not (folder / ".lowrank-lm-run.json").exists()


def test_train_overwrite_removes_only_what_the_run_wrote(tiny_data, tmp_path):
    from lowrank_lm.train import run_training
    from lowrank_lm.train.rundir import RECORD

    from .conftest import tiny_run_config

    out = tmp_path / "run"
    cfg = tiny_run_config(tiny_data, out, "train.tokens=512")
    run_training(cfg)
    written = json.loads((out / RECORD).read_text())["files"]
    assert {"config.yaml", "metrics.jsonl", "summary.json", "tokenizer.json", ".lock"} <= set(written)
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "my-export").mkdir()
    again = run_training(cfg, overwrite=True)
    assert again.finished and (out / "summary.json").is_file()
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoints" / "my-export").is_dir()


def test_a_run_folder_of_an_older_version_is_still_a_run(tiny_data, tmp_path):
    """Runs written before the record existed (config beside metrics) resume and overwrite as before."""
    from lowrank_lm.train import run_training
    from lowrank_lm.train.rundir import RECORD

    from .conftest import tiny_run_config

    out = tmp_path / "old"
    cfg = tiny_run_config(tiny_data, out, "train.tokens=512")
    run_training(cfg)
    (out / RECORD).unlink()
    assert run_training(cfg, overwrite=True).finished
    assert "config.yaml" in json.loads((out / RECORD).read_text())["files"]


def test_prepare_refuses_a_folder_that_is_not_a_data_dir(tmp_path):
    """A folder with the user's tokenizer files and no manifest: before, prepare deleted them (no --force)."""
    from .ecosystem import sentences

    source = tmp_path / "text.txt"
    source.write_text("\n\n".join(" ".join(sentences(12, seed=i)) for i in range(40)))
    data = tmp_path / "data"
    (data / "tokenizer").mkdir(parents=True)
    (data / "tokenizer" / "vocab.json").write_text("{}")
    (data / "tokenizer.json").write_text("{\"mine\": true}")
    (data / "tokenizer.model").write_bytes(b"\x00mine")
    common = [f"data.source={source}", "data.tokenizer=bpe-300", f"data.dir={data}", "data.num_workers=1", "--quiet"]
    for force in ([], ["--force"]):
        code, _, err = cli("prepare", *common, *force)
        _one_line_refusal(code, err, f"{data} is not empty and was not written by lowrank-lm prepare",
                          "set data.dir to a new or empty folder")
        assert (data / "tokenizer.json").read_text() == "{\"mine\": true}"
        assert (data / "tokenizer.model").read_bytes() == b"\x00mine"
        assert (data / "tokenizer" / "vocab.json").read_text() == "{}"
        assert sorted(p.name for p in data.iterdir()) == ["tokenizer", "tokenizer.json", "tokenizer.model"]


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_prepare_leaves_no_lock_or_record_behind(tmp_path, existed):
    """The source holds less text than the validation split needs: a user error, and the folder is as before
    (removed when prepare made it, empty when it was empty): no .prepare.lock, no record."""
    source = tmp_path / "short.txt"
    source.write_text("a few words only.\n")
    data = tmp_path / "data"
    if existed:
        data.mkdir()
    code, _, err = cli("prepare", f"data.source={source}", "data.tokenizer=gpt2", f"data.dir={data}",
                       "data.val_tokens=100000", "data.num_workers=1", "--quiet")
    assert code == 2 and err.count("\n") == 1
    assert (sorted(p.name for p in data.iterdir()) == []) if existed else not data.exists()


def test_a_prepare_that_breaks_on_bad_bytes_leaves_no_lock_behind(tmp_path):
    """A non-UTF-8 .jsonl stops the pass (as an error of any kind): nothing resumable was written, so nothing
    of the attempt stays: before, .prepare.lock and the tokenizer were left in the folder."""
    from lowrank_lm.config import DataConfig
    from lowrank_lm.data import prepare_data

    source = tmp_path / "bad.jsonl"
    source.write_bytes(b'{"text": "hello \xff\xfe world"}\n')
    data = tmp_path / "data"
    with pytest.raises(Exception):  # noqa: B017 -- which type is the one-line-errors work's (issue 23 item 3)
        prepare_data(DataConfig(source=str(source), tokenizer="gpt2", dir=str(data), num_workers=1), progress=False)
    assert not data.exists()


def test_sweep_refuses_a_foreign_out_dir_and_run_folder(tmp_path):
    from lowrank_lm.errors import UserError
    from lowrank_lm.launch.execute import execute
    from lowrank_lm.launch.sweep import load_sweep

    from .test_scaling_sweep import CPU, FakeTrainer

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("my,table\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {out}\nsizes: {{s1: {CPU / 'scale-1.yaml'}}}\nstructures: {{dense: {{}}}}\n"
                    "budgets: {tokens: [40960]}\n")
    plan = load_sweep(path)
    trainer = FakeTrainer()
    with pytest.raises(UserError, match=f"{out} is not empty and was not written by lowrank-lm sweep"):
        execute(plan, trainer, out=io.StringIO())
    assert (out / "results.csv").read_text() == "my,table\n" and trainer.calls == []
    (out / "results.csv").unlink()
    (out / plan.runs[0].name).mkdir()
    (out / plan.runs[0].name / "notes.txt").write_text("mine")  # a folder of the run's name, not a run
    with pytest.raises(UserError, match=f"{plan.runs[0].run_dir} is not empty and was not written by a training"):
        execute(plan, trainer, out=io.StringIO())
    assert trainer.calls == [] and (out / plan.runs[0].name / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("size", ["../../escaped", "/abs/x", "a/b"])
def test_sweep_names_that_would_leave_out_dir_are_refused(tmp_path, size):
    from .test_scaling_sweep import CPU

    path = tmp_path / "sweep.yaml"
    path.write_text(f"out_dir: {tmp_path / 'runs'}\nsizes: {{'{size}': {CPU / 'tiny.yaml'}}}\n"
                    "structures: {dense: {}}\n")
    code, out, err = cli("sweep", str(path), "--dry-run")
    _one_line_refusal(code, err, f"size '{size}' / structure 'dense' make the run name", "not a plain folder name")
    assert out == "" and not (tmp_path / "runs").exists() and not (tmp_path / "escaped").exists()


def test_demo_refuses_a_foreign_out_folder_before_any_work(tmp_path):
    from pathlib import Path

    out = tmp_path / "demo"
    out.mkdir()
    (out / "results.md").write_text("| my table |\n")
    tiny = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "tiny.yaml"
    code, _, err = cli("demo", str(tiny), "data.dir=" + str(tmp_path / "never"), "--out", str(out))
    _one_line_refusal(code, err, f"{out} is not empty and was not written by lowrank-lm demo",
                      "choose another --out")
    assert (out / "results.md").read_text() == "| my table |\n" and not (tmp_path / "never").exists()


def test_lm_eval_default_output_is_checked_like_output(tmp_path):
    from lowrank_lm.commands.lm_eval import _check_output
    from lowrank_lm.errors import UserError

    target = tmp_path / "step-1_x.json"
    target.symlink_to(tmp_path / "victim.json")
    (tmp_path / "victim.json").write_text('{"tasks": [], "results": {}}')
    with pytest.raises(UserError, match=r"exists and is not an lm-eval record.* with --output"):
        _check_output(target, given=False)


def test_the_run_layout_knows_the_files_a_sweep_adds():
    """An older sweep's run folder is adopted with the sweep's own files (they must not read as foreign)."""
    from lowrank_lm.launch.execute import FAILED_MARKER, LOG_NAME
    from lowrank_lm.launch.job_record import JOB_RECORD
    from lowrank_lm.train.rundir import SWEEP_FILES

    assert set(SWEEP_FILES) == {FAILED_MARKER, LOG_NAME, JOB_RECORD}


def test_a_demo_folder_of_an_older_version_is_adopted_only_with_its_results(tmp_path):
    """No record: the demo's own run folders (and results.json with its table) are the demo's; a table or plot
    without a demo's results.json beside it is not."""
    from lowrank_lm.demo import demo_ownership
    from lowrank_lm.errors import UserError

    runs = ["dense", "lowrank-32"]
    old = tmp_path / "old"
    (old / "dense").mkdir(parents=True)
    (old / "results.json").write_text(json.dumps({"rows": [{"name": "dense"}, {"name": "lowrank-32"}]}))
    (old / "results.md").write_text("| table |\n")
    assert demo_ownership(old, runs).claim({"results.md", *runs}, "fix") >= {"results.md", "dense", "results.json"}
    lone = tmp_path / "lone"
    (lone / "dense").mkdir(parents=True)
    (lone / "loss.png").write_bytes(b"my plot")
    with pytest.raises(UserError, match=f"{lone} is not empty and was not written by lowrank-lm demo"):
        demo_ownership(lone, runs).claim({"loss.png", *runs}, "fix")
    assert (lone / "loss.png").read_bytes() == b"my plot"


def test_fit_report_is_ours_or_refused(tmp_path):
    report = tmp_path / "fit"
    report.mkdir()
    (report / "notes.md").write_text("mine")
    code, _, err = cli("fit", "paper", "--series", "dense,lowrank-32", "--bootstrap", "20", "--report", str(report))
    assert code == 2 and err.count("\n") == 1 and "was not written by lowrank-lm fit" in err
    assert sorted(p.name for p in report.iterdir()) == ["notes.md"]  # refused before writing anything
    fresh = tmp_path / "fit2"
    args = ("fit", "paper", "--series", "dense,lowrank-32", "--bootstrap", "20", "--report", str(fresh))
    assert cli(*args)[0] == 0
    assert cli(*args)[0] == 0  # its own folder: rewritten
    written = {p.name for p in fresh.iterdir()}
    assert {"report.md", "fit.json", "points.csv", "scaling.png", ".lowrank-lm-fit.json"} <= written
    (fresh / "fit.json").unlink()
    (fresh / "fit.json").symlink_to(tmp_path / "victim.json")  # a link planted at one of its names
    (tmp_path / "victim.json").write_text("victim")
    assert cli(*args)[0] == 0
    assert (tmp_path / "victim.json").read_text() == "victim" and not (fresh / "fit.json").is_symlink()


def test_coord_check_out_is_ours_or_refused(tmp_path):
    out = tmp_path / "cc"
    out.mkdir()
    (out / "coord_check.png").write_bytes(b"a plot of my own")
    (out / ".lowrank-lm-coord-check.json").write_text('{"files": []}')  # a coord-check folder, but not its png
    code, _, err = cli("coord-check", "configs/cpu/tiny.yaml", "--widths", "32,64", "--steps", "1", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "coord_check.png was not written by lowrank-lm coord-check" in err
    assert (out / "coord_check.png").read_bytes() == b"a plot of my own"
