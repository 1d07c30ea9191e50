"""Atomic writes never follow a planted symlink, and locks left by a crash never block (lowrank_lm.atomic,
lowrank_lm.locks).

Before, each writer wrote a fixed temporary name (``config.yaml.tmp``...) with a plain ``open``, which follows
a symlink: a link planted at that name made our write land on another file. Each case plants a link at the
writer's former temporary name (and one at the target itself) pointing at a victim file, runs the writer,
and checks that the victim is byte-identical and the target holds what was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowrank_lm.atomic import temp_target, write_atomic
from lowrank_lm.errors import UserError

VICTIM = b"precious\n"


def _plant(folder: Path, *names: str) -> Path:
    victim = folder.parent / f"{folder.name}-victim.txt"
    victim.write_bytes(VICTIM)
    for name in names:
        (folder / name).symlink_to(victim)
    return victim


class _Provenance:
    """The one thing write_config asks of a provenance: its comment lines."""

    def comment_lines(self) -> list[str]:
        return ["# test"]


def _write_config(run: Path) -> None:
    from lowrank_lm.resolve import load_config
    from lowrank_lm.train.rundir import RunDir

    RunDir(run).write_config(load_config(None, []), _Provenance())


def _summary(run: Path) -> None:
    from .test_scaling_sweep import fake_summary, load_sweep, write_sweep

    plan = load_sweep(write_sweep(run.parent, "sizes: {s1: " + str(_cpu("scale-1.yaml")) +
                                  "}\nstructures: {dense: {}}\nbudgets: {tokens: [40960]}\n"))
    fake_summary(plan.runs[0], 3.0).write(run / "summary.json")


def _cpu(name: str) -> Path:
    return Path(__file__).resolve().parents[1] / "configs" / "cpu" / name


def _metrics(run: Path) -> None:
    from lowrank_lm.train.metrics import MetricsLogger

    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    MetricsLogger(run, 1, False, {}).close()  # resuming at step 1 rewrites the file


def _tokenizer_copy(run: Path) -> None:
    from lowrank_lm.data.tokenizer import copy_tokenizer

    data = run.parent / "data"
    data.mkdir()
    (data / "tokenizer.json").write_text('{"tok": 1}')
    copy_tokenizer(data, run)


def _sweep_run_config(run: Path) -> None:
    from lowrank_lm.config import save_config
    from lowrank_lm.resolve import load_config

    save_config(load_config(None, []), run / "config.yaml")  # what the sweep writes into a run folder


def _job_record(run: Path) -> None:
    from lowrank_lm.launch.job_record import JobRecord

    JobRecord("local", "7", "jobs/7").save(run)


def _manifest_like(run: Path) -> None:
    write_atomic(run / "manifest.json", b'{"written": true}\n')


def _results_table(run: Path) -> None:
    from lowrank_lm.stats.table import write_json

    write_json({"written": True}, run / "results.json")


# (writer, the file it writes, its former fixed temporary name(s))
WRITERS = {
    "rundir.write_config": (_write_config, "config.yaml", ["config.yaml.tmp"]),
    "summary.write": (_summary, "summary.json", ["summary.json.tmp"]),
    "metrics truncate": (_metrics, "metrics.jsonl", ["metrics.jsonl.tmp"]),
    "copy_tokenizer": (_tokenizer_copy, "tokenizer.json", ["tokenizer.json.tmp"]),
    "job_record.save": (_job_record, "job.json", [".job.json.tmp"]),
    "config.save_config": (_sweep_run_config, "config.yaml", []),
    "data/files.write_atomic": (_manifest_like, "manifest.json", ["manifest.json.tmp"]),
    "stats/table": (_results_table, "results.json", []),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_symlink_at_the_temporary_name_redirects_nothing(tmp_path, name):
    write, target, temp_names = WRITERS[name]
    run = tmp_path / "run"
    run.mkdir()
    victim = _plant(run, *temp_names)
    write(run)
    assert victim.read_bytes() == VICTIM
    assert (run / target).is_file() and not (run / target).is_symlink() and (run / target).stat().st_size > 0
    leftovers = [p.name for p in run.iterdir() if temp_target(p.name) is not None]
    assert leftovers == []  # no temporary file stays behind


@pytest.mark.parametrize("name", [n for n in WRITERS if n != "metrics truncate"])
def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path, name):
    write, target, _ = WRITERS[name]
    run = tmp_path / "run"
    run.mkdir()
    victim = _plant(run, target)
    write(run)
    assert victim.read_bytes() == VICTIM and not (run / target).is_symlink()


def test_temporary_files_are_unique_and_follow_the_umask(tmp_path):
    import os

    from lowrank_lm.atomic import temp_beside
    from lowrank_lm.permissions import current_umask

    target = tmp_path / "x.bin"
    (f1, t1), (f2, t2) = temp_beside(target), temp_beside(target)
    try:
        assert t1 != t2 and temp_target(t1.name) == temp_target(t2.name) == "x.bin"
        assert os.stat(t1).st_mode & 0o777 == 0o666 & ~current_umask()
    finally:
        f1.close()
        f2.close()
    assert temp_target("x.bin.tmp") is None and temp_target(".x.bin.tmp") is None


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from lowrank_lm.atomic import atomic_open

    target = tmp_path / "t.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half")
        raise RuntimeError("disk gone")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_shards_are_written_through_unique_temporary_files(tmp_path):
    import numpy as np

    from lowrank_lm.data.shards import ShardWriter

    victim = _plant(tmp_path, "train_000000.bin.tmp")
    writer = ShardWriter(tmp_path, "train", "uint16", 4)
    writer.append(np.arange(6))
    writer.close()
    assert victim.read_bytes() == VICTIM
    assert np.fromfile(tmp_path / "train_000000.bin", dtype=np.uint16).tolist() == [0, 1, 2, 3]
    assert np.fromfile(tmp_path / "train_000001.bin", dtype=np.uint16).tolist() == [4, 5]


# ----------------------------------------------------------------------------- locks (filelock)


def test_a_lock_file_left_by_a_crash_does_not_block_the_next_run(tmp_path):
    from lowrank_lm.train.rundir import LOCK, RunDir, run_ownership

    run = tmp_path / "run"
    run_ownership(run).claim({LOCK}, "")
    (run / LOCK).write_text("12345")  # what a killed trainer leaves: the file, no holder
    rd = RunDir(run)
    rd.acquire()
    try:
        second = RunDir(run)
        with pytest.raises(UserError, match="is in use by another running training process"):
            second.acquire()
    finally:
        rd.release()
    RunDir(run).acquire()  # released: free again


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    from lowrank_lm.train.rundir import LOCK, RunDir, run_ownership

    run = tmp_path / "run"
    run_ownership(run).claim({LOCK}, "")
    victim = _plant(run, LOCK)
    with pytest.raises(UserError, match=f"cannot take the lock {run / LOCK} .*remove it"):
        RunDir(run).acquire()
    assert victim.read_bytes() == VICTIM


def test_a_symlinked_prepare_lock_is_one_line_and_its_target_untouched(tmp_path):
    from lowrank_lm.config import DataConfig
    from lowrank_lm.data import prepare_data
    from lowrank_lm.data.pipeline import DATA_FILES, LOCK, data_ownership
    from lowrank_lm.locks import is_held

    data = tmp_path / "data"
    data_ownership(data).claim(DATA_FILES, "")
    victim = _plant(data, LOCK)
    with pytest.raises(UserError, match=r"cannot take the lock .*\.prepare\.lock"):
        prepare_data(DataConfig(source="embedded", tokenizer="gpt2", dir=str(data)), progress=False)
    assert victim.read_bytes() == VICTIM and not is_held(data / LOCK)


def test_the_sweep_probe_sees_a_filelock_holder_and_creates_no_lock_file(tmp_path):
    from filelock import FileLock

    from lowrank_lm.locks import is_held

    path = tmp_path / ".lock"
    assert not is_held(path) and not path.exists()
    with FileLock(str(path)):
        assert is_held(path)
    assert not is_held(path)


def test_records_name_only_plain_entries(tmp_path):
    from lowrank_lm.ownership import Ownership

    folder = tmp_path / "f"
    owner = Ownership(folder, ".rec.json", "a test")
    owner.claim({"a.txt"}, "fix it")
    record = json.loads((folder / ".rec.json").read_text())
    record["files"] += ["../outside.txt", "/etc/passwd", "sub/x"]
    (folder / ".rec.json").write_text(json.dumps(record))
    (tmp_path / "outside.txt").write_text("keep")
    assert owner.owned() == {"a.txt", ".rec.json"}
    owner.remove({"../outside.txt", "a.txt"})
    assert (tmp_path / "outside.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="not a plain file name"):
        owner.claim({"../x"}, "fix it")


def test_appended_logs_refuse_a_symlink(tmp_path):
    """train.log and metrics.jsonl are appended to, not replaced: a link at their name is refused (ELOOP)."""
    from lowrank_lm.atomic import open_append
    from lowrank_lm.train.metrics import MetricsLogger

    victim = _plant(tmp_path, "train.log")
    with pytest.raises(OSError):
        open_append(tmp_path / "train.log")
    with open_append(tmp_path / "new.log", "ab") as f:
        f.write(b"x")
    assert (tmp_path / "new.log").read_bytes() == b"x" and victim.read_bytes() == VICTIM
    run = tmp_path / "run"
    run.mkdir()
    victim = _plant(run, "metrics.jsonl")
    logger = MetricsLogger(run, None, False, {})  # a fresh run: the old file (here a link) goes first
    logger.log({"step": 1, "loss": 2.0})
    logger.close()
    assert victim.read_bytes() == VICTIM and (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'
